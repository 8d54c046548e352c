"""Engine deltas to OpenAI response objects: small pure builders, shared by streaming and non-streaming paths."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from server.engine import GenerationDelta
from server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    Completion,
    CompletionChoice,
    Usage,
)


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

    def __init__(self, meta: ResponseMeta, *, include_usage: bool, n: int = 1) -> None:
        self._meta = meta
        self._usage = _UsageTally(meta, n=n, include_usage=include_usage)
        self._started: set[int] = set()

    def push(self, index: int, delta: GenerationDelta) -> Iterator[ChatCompletionChunk]:
        if index not in self._started:
            self._started.add(index)
            yield self._chunk(index, ChatDelta(role="assistant", content=""))
        if delta.text:
            yield self._chunk(index, ChatDelta(content=delta.text))
        if delta.finish_reason is not None:
            yield self._chunk(index, ChatDelta(), finish_reason=delta.finish_reason)
            usage = self._usage.finish(index, delta.completion_tokens)
            if usage is not None:
                yield ChatCompletionChunk(
                    id=self._meta.id, created=self._meta.created, model=self._meta.model, choices=[], usage=usage
                )

    def _chunk(self, index: int, delta: ChatDelta, finish_reason: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self._meta.id,
            created=self._meta.created,
            model=self._meta.model,
            choices=[ChatChunkChoice(index=index, delta=delta, finish_reason=finish_reason)],  # type: ignore[arg-type]
        )


class CompletionStreamState:
    """Turns engine deltas of each choice into legacy completion chunks, with the same usage rule as chat."""

    def __init__(self, meta: ResponseMeta, *, include_usage: bool, n: int = 1) -> None:
        self._meta = meta
        self._usage = _UsageTally(meta, n=n, include_usage=include_usage)

    def push(self, index: int, delta: GenerationDelta) -> Iterator[Completion]:
        if delta.text or delta.finish_reason is not None:
            yield self._chunk(index, delta.text, delta.finish_reason)
        if delta.finish_reason is not None:
            usage = self._usage.finish(index, delta.completion_tokens)
            if usage is not None:
                yield Completion(
                    id=self._meta.id, created=self._meta.created, model=self._meta.model, choices=[], usage=usage
                )

    def _chunk(self, index: int, text: str, finish_reason: str | None) -> Completion:
        return Completion(
            id=self._meta.id,
            created=self._meta.created,
            model=self._meta.model,
            choices=[CompletionChoice(index=index, text=text, finish_reason=finish_reason)],  # type: ignore[arg-type]
        )


Finished = list[tuple[str, GenerationDelta]]  # each choice's text and last delta, in choice order


def chat_completion(meta: ResponseMeta, finished: Finished) -> ChatCompletion:
    return ChatCompletion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=[
            ChatChoice(index=i, message=AssistantMessage(content=text), finish_reason=last.finish_reason)  # type: ignore[arg-type]
            for i, (text, last) in enumerate(finished)
        ],
        usage=meta.usage(sum(last.completion_tokens for _, last in finished)),
    )


def completion(meta: ResponseMeta, finished: Finished) -> Completion:
    return Completion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=[
            CompletionChoice(index=i, text=text, finish_reason=last.finish_reason)  # type: ignore[arg-type]
            for i, (text, last) in enumerate(finished)
        ],
        usage=meta.usage(sum(last.completion_tokens for _, last in finished)),
    )
