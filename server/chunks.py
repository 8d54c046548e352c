"""Engine deltas to OpenAI response objects: small pure builders, shared by streaming and non-streaming paths."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.engine import GenerationDelta
from server.engine.base import TokenLogprob
from server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    ChatTokenLogprob,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    FunctionCall,
    ToolCallOut,
    TopLogprob,
    Usage,
)
from server.tools import CallFormat, ToolCall, may_be_calls, parse_calls


@dataclass
class ResponseMeta:
    """What every object of one response shares."""

    model: str
    prompt_tokens: int
    id_prefix: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = self.id or f"{self.id_prefix}-{uuid.uuid4().hex}"

    def usage(self, completion_tokens: int) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=self.prompt_tokens + completion_tokens,
        )


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def chat_logprobs(items: Sequence[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=_text(item.piece),
                logprob=item.logprob,
                bytes=list(item.piece),
                top_logprobs=[TopLogprob(token=_text(p), logprob=lp, bytes=list(p)) for p, lp in item.top],
            )
            for item in items
        ]
    )


def completion_logprobs(items: Sequence[TokenLogprob], offset: int = 0) -> CompletionLogprobs:
    tokens = [_text(item.piece) for item in items]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[item.logprob for item in items],
        top_logprobs=[{_text(p): lp for p, lp in item.top} for item in items],
        text_offset=offsets,
    )


@dataclass(frozen=True)
class ChoiceResult:
    """A finished choice of a non-streamed response."""

    text: str
    last: GenerationDelta
    logprobs: tuple[TokenLogprob, ...] | None  # None when not asked for


class _UsageTally:
    """Completion tokens of each choice; the usage chunk goes out once every choice has finished."""

    def __init__(self, meta: ResponseMeta, *, n: int, include_usage: bool) -> None:
        self._meta = meta
        self._n = n
        self._include_usage = include_usage
        self._tokens: dict[int, int] = {}

    def finish(self, index: int, completion_tokens: int) -> Usage | None:
        self._tokens[index] = completion_tokens
        if self._include_usage and len(self._tokens) == self._n:
            return self._meta.usage(sum(self._tokens.values()))
        return None


class ChatStreamState:
    """Turns engine deltas of each choice into chat chunks: the role once first, content deltas, an empty delta
    with the finish reason; when asked, a usage chunk with no choices after the last choice has finished."""

    def __init__(
        self,
        meta: ResponseMeta,
        *,
        include_usage: bool,
        n: int = 1,
        logprobs: bool = False,
        functions: CallFormat | None = None,
    ) -> None:
        self._meta = meta
        self._usage = _UsageTally(meta, n=n, include_usage=include_usage)
        self._started: set[int] = set()
        self._logprobs = logprobs
        self._functions = functions  # tools may be called: a reply that starts like a call is held back
        self._held: dict[int, str] = {}

    def push(self, index: int, delta: GenerationDelta) -> Iterator[ChatCompletionChunk]:
        if index not in self._started:
            self._started.add(index)
            yield self._chunk(index, ChatDelta(role="assistant", content=""))
        text = delta.text
        if self._functions is not None and index in self._held:
            text = self._held.pop(index) + text
            if may_be_calls(text, self._functions):
                if delta.finish_reason is None:
                    self._held[index] = text
                    return
                calls = parse_calls(text, self._functions)
                if calls is not None:
                    yield self._chunk(index, ChatDelta(tool_calls=tool_call_deltas(calls)))
                    yield from self._finish(index, "tool_calls", delta.completion_tokens, None)
                    return
        logprobs = chat_logprobs(delta.logprobs) if self._logprobs and delta.logprobs else None
        if text:
            yield self._chunk(index, ChatDelta(content=text), logprobs=logprobs)
            logprobs = None
        if delta.finish_reason is not None:
            yield from self._finish(index, delta.finish_reason, delta.completion_tokens, logprobs)

    def hold(self, index: int) -> None:
        """Start a choice in tool mode: its text is held until it is clearly not a tool call."""
        self._held[index] = ""

    def _finish(
        self, index: int, reason: str, completion_tokens: int, logprobs: ChatLogprobs | None
    ) -> Iterator[ChatCompletionChunk]:
        yield self._chunk(index, ChatDelta(), finish_reason=reason, logprobs=logprobs)
        usage = self._usage.finish(index, completion_tokens)
        if usage is not None:
            yield ChatCompletionChunk(
                id=self._meta.id, created=self._meta.created, model=self._meta.model, choices=[], usage=usage
            )

    def _chunk(
        self, index: int, delta: ChatDelta, finish_reason: str | None = None, logprobs: ChatLogprobs | None = None
    ) -> ChatCompletionChunk:
        choice = ChatChunkChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=logprobs)  # type: ignore[arg-type]
        return ChatCompletionChunk(
            id=self._meta.id, created=self._meta.created, model=self._meta.model, choices=[choice]
        )


class CompletionStreamState:
    """Turns engine deltas of each choice into legacy completion chunks, with the same usage rule as chat."""

    def __init__(self, meta: ResponseMeta, *, include_usage: bool, n: int = 1, logprobs: bool = False) -> None:
        self._meta = meta
        self._usage = _UsageTally(meta, n=n, include_usage=include_usage)
        self._logprobs = logprobs
        self._offsets: dict[int, int] = {}

    def push(self, index: int, delta: GenerationDelta) -> Iterator[Completion]:
        if delta.text or delta.finish_reason is not None:
            logprobs = None
            if self._logprobs:
                logprobs = completion_logprobs(delta.logprobs, self._offsets.get(index, 0))
                self._offsets[index] = self._offsets.get(index, 0) + sum(len(t) for t in logprobs.tokens)
            yield self._chunk(index, delta.text, delta.finish_reason, logprobs)
        if delta.finish_reason is not None:
            usage = self._usage.finish(index, delta.completion_tokens)
            if usage is not None:
                yield Completion(
                    id=self._meta.id, created=self._meta.created, model=self._meta.model, choices=[], usage=usage
                )

    def _chunk(
        self, index: int, text: str, finish_reason: str | None, logprobs: CompletionLogprobs | None
    ) -> Completion:
        choice = CompletionChoice(index=index, text=text, finish_reason=finish_reason, logprobs=logprobs)  # type: ignore[arg-type]
        return Completion(id=self._meta.id, created=self._meta.created, model=self._meta.model, choices=[choice])


def tool_call_deltas(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Each call whole in one delta: id, type and name once, the arguments as one fragment."""
    return [
        {"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for i, c in enumerate(calls)
    ]


def chat_completion(
    meta: ResponseMeta, finished: list[ChoiceResult], functions: CallFormat | None = None
) -> ChatCompletion:
    choices = []
    for i, choice in enumerate(finished):
        calls = None if functions is None else parse_calls(choice.text, functions)
        if calls is not None:
            message = AssistantMessage(
                content=None,
                tool_calls=[
                    ToolCallOut(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls
                ],
            )
        else:
            message = AssistantMessage(content=choice.text)
        choices.append(
            ChatChoice(
                index=i,
                message=message,
                finish_reason="tool_calls" if calls is not None else choice.last.finish_reason,  # type: ignore[arg-type]
                logprobs=None if choice.logprobs is None else chat_logprobs(choice.logprobs),
            )
        )
    return ChatCompletion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=choices,
        usage=meta.usage(sum(choice.last.completion_tokens for choice in finished)),
    )


def completion(meta: ResponseMeta, finished: list[ChoiceResult]) -> Completion:
    return Completion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=[
            CompletionChoice(
                index=i,
                text=choice.text,
                finish_reason=choice.last.finish_reason,  # type: ignore[arg-type]
                logprobs=None if choice.logprobs is None else completion_logprobs(choice.logprobs),
            )
            for i, choice in enumerate(finished)
        ],
        usage=meta.usage(sum(choice.last.completion_tokens for choice in finished)),
    )
