"""Reasoning models in the pipeline: whether a reply thinks and for how long, where its thinking block begins,
and its text split into thinking and answer as it streams.

A reasoning model writes `<think>...</think>` (its configured markers) before its answer. Whether the reply begins
inside the block is read from the rendered prompt's end: a DeepSeek-R1 template opens the block itself (the prompt
ends with `<think>`), a Qwen3 template with thinking off closes an empty one (the prompt ends with `</think>`), and
otherwise the model may open one as its reply begins. A model whose block opens implicitly (DeepSeek-R1's first
templates: no `<think>` in the prompt, yet the model thinks until `</think>`) begins inside it unless the prompt
closed it, and a `<think>` it writes first anyway is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from server.engine.base import Engine, ReasoningFormat, ThinkingBudget
from server.errors import InvalidRequestError, UnsupportedParameterError
from server.generation.plan import GenerationPlan
from server.generation.thinking_grammar import with_thinking

Start = Literal["inside", "before"]
BLANK_HOLD = 64  # blanks held back at most at the end of the thinking (trimmed when the block ends right there)


@dataclass(frozen=True)
class Thinking:
    """A plan's thinking, decided for its model: the template's switch set, the budget, whether it was asked for."""

    format: ReasoningFormat
    template_vars: dict[str, Any] = field(default_factory=dict)
    budget_tokens: int | None = None  # None: the block is never cut short
    requested: bool = False  # asked for by the request: with an output grammar, the block must come first

    def start(self, prompt_tail: str) -> Start | None:
        """Where the reply begins, from the end of its prompt: inside the block, before one, or None when the
        prompt closed the block (thinking is off)."""
        tail, fmt = prompt_tail.rstrip(), self.format
        if tail.endswith(fmt.end):
            return None
        return "inside" if fmt.implicit_start or tail.endswith(fmt.start) else "before"

    def budget(self, start: Start) -> ThinkingBudget | None:
        if self.budget_tokens is None:
            return None
        fmt = self.format
        return ThinkingBudget(fmt.start, fmt.end, self.budget_tokens, start == "inside", fmt.implicit_start)

    def grammar(self, grammar: str, start: Start) -> str:
        """The output grammar behind the thinking block: required when the request asked for thinking."""
        fmt, opened = self.format, start == "inside"
        implicit = opened and fmt.implicit_start
        return with_thinking(grammar, fmt.start, fmt.end, opened=opened, required=self.requested, implicit=implicit)


def thinking_of(plan: GenerationPlan, reasoning: ReasoningFormat | None) -> Thinking | None:
    """The plan's thinking on its model (None: no thinking to separate); a 400 naming the request's field when
    the model cannot do what was asked."""
    asked, where = plan.reasoning, plan.params.reasoning
    if plan.prompt is not None:  # a raw prompt: no chat template, and its text is not split
        return None
    if reasoning is None:
        if asked is not None and asked.enabled:
            raise UnsupportedParameterError(
                f"Unsupported parameter: '{where}' is not supported with the model `{plan.model}`: it is not a "
                "reasoning model.",
                param=where,
            )
        return None
    switch = reasoning.switch
    if asked is None:
        return Thinking(reasoning, budget_tokens=reasoning.budget_tokens)
    if not asked.enabled:
        if switch is None:
            raise InvalidRequestError(
                f"Invalid value for '{where}': the model `{plan.model}` always thinks; its chat template has no "
                "switch to turn thinking off.",
                param=where,
            )
        # A template that ignores its switch still gets no thinking: a block the model opens is closed at once.
        return Thinking(reasoning, {switch: False}, budget_tokens=0)
    budget = asked.budget_tokens
    if budget is None and asked.budget_scale is not None:
        budget = max(1, round(reasoning.budget_tokens * asked.budget_scale))
    return Thinking(reasoning, {switch: True} if switch else {}, budget, requested=True)


async def reply_start(engine: Engine, prompt: Sequence[int], thinking: Thinking) -> Start | None:
    """Where the reply to a prompt of these tokens begins (`Thinking.start`), from the text of its last tokens."""
    fmt = thinking.format
    # Enough tokens for both markers and blanks after them, though each character were a token of its own bytes.
    last = prompt[-(4 * (len(fmt.start) + len(fmt.end)) + 16) :]
    return thinking.start(b"".join(await engine.detokenize(last)).decode("utf-8", "replace"))


class ThinkingSplitter:
    """One reply's text, split as it streams into thinking and answer. Only what may still be the start of a
    marker (and blanks that may end the thinking) is held back; blanks around the thinking and before the answer
    are left out, as reasoning parsers do. Where the block opens implicitly, the reply begins inside it, and a start
    marker it writes first anyway is dropped."""

    def __init__(self, fmt: ReasoningFormat, start: Start) -> None:
        self._start, self._end = fmt.start, fmt.end
        self._phase: Literal["before", "opening", "inside", "answer-lead", "answer"] = (
            "opening" if start == "inside" and fmt.implicit_start else start
        )
        self._held = ""
        self._blanks: list[str] = []  # the reply's first pieces while they are only blanks
        self._thought = False  # some thinking text has been given out
        self.opened = start == "inside"
        self.closed = False

    def push(self, text: str) -> list[tuple[bool, str]]:
        """(is thinking, text) pieces, in order."""
        out: list[tuple[bool, str]] = []
        if self._phase in ("before", "opening") and not self._held and not text.strip():
            self._blanks.append(text)  # nothing but blanks yet: kept as pieces, so a long run costs linear time
            return out
        self._feed(self._take_blanks() + self._held + text, out)
        return out

    def _take_blanks(self) -> str:
        blanks, self._blanks = "".join(self._blanks), []
        return blanks

    def finish(self) -> list[tuple[bool, str]]:
        """What is still held, once the reply has ended: a block never closed was all thinking."""
        held, self._held = self._take_blanks() + self._held, ""
        if self._phase == "before":
            return [(False, held)] if held else []
        if self._phase == "opening":  # blanks, or the beginning of a start marker: thinking never closed
            held = held.strip()
            return [(True, held)] if held else []
        if self._phase == "inside":
            held = held.rstrip()
            return [(True, held)] if held else []
        return []

    def _feed(self, text: str, out: list[tuple[bool, str]]) -> None:
        self._held = ""
        if self._phase == "before":
            lead = text.lstrip()
            if lead.startswith(self._start):
                self._phase, self.opened = "inside", True
                text = lead[len(self._start) :]
            elif self._start.startswith(lead):
                self._held = text
                return
            else:
                self._phase = "answer"
        elif self._phase == "opening":
            lead = text.lstrip()
            if self._start.startswith(lead) and lead != self._start:
                self._held = lead  # leading blanks are no thinking: only what may still become the marker is held
                return
            self._phase = "inside"
            if lead.startswith(self._start):
                text = lead[len(self._start) :]
        if self._phase == "inside":
            text = self._thinking(text, out)
        if self._phase == "answer-lead":
            text = text.lstrip()
            if text:
                self._phase = "answer"
        if self._phase == "answer" and text:
            out.append((False, text))

    def _thinking(self, text: str, out: list[tuple[bool, str]]) -> str:
        """Give out the thinking in `text`; returns what comes after the block's end, if it ended."""
        if not self._thought:
            text = text.lstrip()
        end = text.find(self._end)
        if end >= 0:
            self._give(text[:end].rstrip(), out)
            self._phase, self.closed = "answer-lead", True
            return text[end + len(self._end) :]
        cut = len(text) - _partial_suffix(text, self._end)
        blanks = len(text[:cut]) - len(text[:cut].rstrip())
        if blanks <= BLANK_HOLD:
            cut -= blanks
        self._give(text[:cut], out)
        self._held = text[cut:]
        return ""

    def _give(self, thinking: str, out: list[tuple[bool, str]]) -> None:
        if thinking:
            out.append((True, thinking))
            self._thought = True


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a proper beginning of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
