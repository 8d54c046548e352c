"""Engine deltas to reply events, with a reasoning model's thinking and tool calls read out of the text."""

from __future__ import annotations

from collections.abc import Iterator

from server.engine.base import GenerationDelta, ReasoningFormat, TokenLogprob
from server.generation.reply import ChoiceEnd, ReasoningPiece, ReplyEvent, TextPiece
from server.generation.thinking import Start, ThinkingSplitter
from server.generation.tool_dialects import CallPreview, CallSpotter, dialect
from server.generation.tools import CallFormat, parse_calls


class ReplyReader:
    """Engine deltas to reply events. A reasoning model's thinking block is split off first (`thinking`: its
    markers, and where the reply begins); tool calls are read from the answer after it. With tools that may be
    called, a choice's answer is shown up to where calls may begin (tool_dialects/spotter.py); from there each
    call is given out as it streams (tool_dialects/preview.py), and the rest is read whole at the end: more tool
    calls, or, when no call was given out, the held text after all."""

    def __init__(
        self, calls: CallFormat | None, choices: int, thinking: tuple[ReasoningFormat, Start] | None = None
    ) -> None:
        self._calls = calls
        self._spotters = {i: CallSpotter(dialect(calls.dialect)) for i in range(choices)} if calls is not None else {}
        self._previews = {i: CallPreview(dialect(calls.dialect), calls, i) for i in range(choices)} if calls else {}
        self._held_logprobs: dict[int, list[TokenLogprob]] = {}  # of text held back
        self._splitters = {i: ThinkingSplitter(*thinking) for i in range(choices)} if thinking is not None else {}
        self._reasoning_tokens: dict[int, int] = {}

    def push(self, index: int, delta: GenerationDelta) -> Iterator[ReplyEvent]:
        text = delta.text
        logprobs = delta.logprobs
        splitter = self._splitters.get(index)
        if splitter is not None:
            pieces = splitter.push(text) + (splitter.finish() if delta.finish_reason is not None else [])
            thinking = "".join(piece for is_thinking, piece in pieces if is_thinking)
            text = "".join(piece for is_thinking, piece in pieces if not is_thinking)
            if thinking:
                yield ReasoningPiece(index, thinking)
                if not text:
                    logprobs = ()  # log probabilities are given for the answer's tokens only
            if index not in self._reasoning_tokens and (splitter.closed or delta.finish_reason is not None):
                self._reasoning_tokens[index] = delta.completion_tokens if splitter.opened else 0
        spotter = self._spotters.get(index)
        if spotter is not None:
            assert self._calls is not None
            preview = self._previews[index]
            text = spotter.push(text)
            calls = preview.push(spotter.calls_text())  # the calls come after the text shown with them
            if delta.finish_reason is not None:
                rest, held = spotter.finish()
                ending = preview.settle(None if held is None else parse_calls(held, self._calls))
                if ending is not None:
                    text += rest
                    if text:
                        yield TextPiece(index, text, (*self._held_logprobs.pop(index, ()), *logprobs))
                    yield from (*calls, *ending)
                    # Calls not read whole were cut short or malformed: cut short when the token limit ended them.
                    cut = delta.finish_reason == "length" and not preview.read_whole
                    reason = "length" if cut else "tool_calls"
                    yield ChoiceEnd(index, reason, delta.completion_tokens, reasoning_tokens=self._thought(index))
                    return
                text += rest + (held or "")
            elif calls:
                if text:
                    yield TextPiece(index, text, (*self._held_logprobs.pop(index, ()), *logprobs))
                yield from calls
                return
            if not text and delta.finish_reason is None:  # held back: its log probabilities come with it
                self._held_logprobs.setdefault(index, []).extend(logprobs)
                logprobs = ()
            else:
                logprobs = (*self._held_logprobs.pop(index, ()), *logprobs)
        if text:
            yield TextPiece(index, text, logprobs)
            logprobs = ()
        if delta.finish_reason is not None:
            yield ChoiceEnd(
                index,
                delta.finish_reason,
                delta.completion_tokens,
                delta.stop_sequence,
                logprobs,
                reasoning_tokens=self._thought(index),
            )

    def _thought(self, index: int) -> int:
        return self._reasoning_tokens.get(index, 0)
