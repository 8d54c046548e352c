"""Reasoning models in the engine: how a model's thinking block is marked (from models.yaml or its chat template),
and the per-request count of thinking tokens after which the scheduler forces the block's end marker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from server.config import DEFAULT_THINKING_BUDGET, ReasoningSpec
from server.engine.base import ReasoningFormat, ThinkingBudget

DEFAULT_START, DEFAULT_END = "<think>", "</think>"
DEFAULT_SWITCH = "enable_thinking"  # Qwen3's, SmolLM3's and others' template variable


def reasoning_format(configured: ReasoningSpec | Literal[False] | None, template: str) -> ReasoningFormat | None:
    """The model's thinking markers and switch: as configured, else found in its chat template (a template that
    mentions <think> or </think> belongs to a reasoning model); None for a model that does not reason. A template
    that mentions the end marker but not the start (DeepSeek-R1's first templates strip earlier turns' thinking at
    `</think>`, and the model begins thinking without writing `<think>`) opens the block implicitly."""
    if configured is False:
        return None
    found_switch = DEFAULT_SWITCH if DEFAULT_SWITCH in template else None
    if configured is None:
        if DEFAULT_START not in template and DEFAULT_END not in template:
            return None
        implicit = _implicit_start(DEFAULT_START, DEFAULT_END, template)
        return ReasoningFormat(DEFAULT_START, DEFAULT_END, DEFAULT_THINKING_BUDGET, found_switch, implicit)
    switch = found_switch if configured.switch == "auto" else configured.switch
    implicit = configured.implicit_start
    if implicit == "auto":
        implicit = _implicit_start(configured.start, configured.end, template)
    return ReasoningFormat(configured.start, configured.end, configured.budget_tokens, switch, implicit)


def _implicit_start(start: str, end: str, template: str) -> bool:
    return end in template and start not in template


class ThinkingLimit:
    """Follows one reply's thinking block token by token and says when its end marker must be forced: once the
    block has run `budget.tokens` tokens. The block is open from the start (the prompt opened it, or it opens
    implicitly) or opens with the reply's first non-blank text; it closes when its end marker appears. Where it opens
    implicitly, a start marker the reply writes first anyway is passed over, and every token from the first counts."""

    def __init__(self, budget: ThinkingBudget, end_tokens: Sequence[int]) -> None:
        self._start = budget.start.encode()
        self._end = budget.end.encode()
        self._budget = budget.tokens
        self._end_tokens = tuple(end_tokens)
        self._phase = "before" if not budget.inside else "opening" if budget.implicit_start else "inside"
        # before, opening: the reply so far, without leading blanks; inside: the tail that may hold the end marker
        self._seen = b""
        self._count = 0
        self._forced = 0  # end marker tokens forced so far

    @property
    def thinking(self) -> bool:
        return self._phase in ("opening", "inside")

    def forced(self) -> int | None:
        """The token to feed next instead of sampling one, while the end marker is being forced."""
        if not self.thinking or self._count < self._budget or self._forced >= len(self._end_tokens):
            return None
        return self._end_tokens[self._forced]

    def push(self, token: int, piece: bytes) -> None:
        """The token the reply took next, and its text."""
        if self._phase == "before":
            self._seen = (self._seen + piece).lstrip()
            if self._seen.startswith(self._start):
                self._phase, self._count = "inside", 1
                self._close_if_ended(self._seen[len(self._start) :])
            elif not self._start.startswith(self._seen):
                self._phase = "after"
            return
        if not self.thinking:
            return
        if self.forced() == token:
            self._forced += 1
        self._count += 1
        if self._phase == "opening":
            lead = (self._seen + piece).lstrip()
            if self._start.startswith(lead) and lead != self._start:
                self._seen = lead  # blanks, or what may still become the start marker
                return
            self._phase = "inside"
            self._close_if_ended(lead[len(self._start) :] if lead.startswith(self._start) else lead)
            return
        self._close_if_ended(self._seen[-(len(self._end) - 1) :] + piece if len(self._end) > 1 else piece)

    def _close_if_ended(self, tail: bytes) -> None:
        if self._end in tail:
            self._phase, self._seen = "after", b""
        else:
            self._seen = tail
