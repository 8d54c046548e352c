"""Engine deltas to reply events, with tool calls read out of the text."""

from __future__ import annotations

from collections.abc import Iterator

from server.engine.base import GenerationDelta
from server.generation.reply import ChoiceEnd, ReplyEvent, TextPiece, ToolCalls
from server.generation.tools import CallFormat, may_be_calls, parse_calls


class ReplyReader:
    """Engine deltas to reply events. With tools that may be called, a choice's text is held back while it may
    still be a call, and parsed at its end: tool calls, or the held text after all."""

    def __init__(self, calls: CallFormat | None, choices: int) -> None:
        self._calls = calls
        self._held: dict[int, str] = {i: "" for i in range(choices)} if calls is not None else {}

    def push(self, index: int, delta: GenerationDelta) -> Iterator[ReplyEvent]:
        text = delta.text
        logprobs = delta.logprobs
        if index in self._held:
            assert self._calls is not None
            text = self._held.pop(index) + text
            if may_be_calls(text, self._calls):
                if delta.finish_reason is None:
                    self._held[index] = text
                    return
                found = parse_calls(text, self._calls)
                if found is not None:
                    yield ToolCalls(index, tuple(found))
                    yield ChoiceEnd(index, "tool_calls", delta.completion_tokens)
                    return
        if text:
            yield TextPiece(index, text, logprobs)
            logprobs = ()
        if delta.finish_reason is not None:
            yield ChoiceEnd(index, delta.finish_reason, delta.completion_tokens, delta.stop_sequence, logprobs)
