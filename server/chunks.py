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


class ChatStreamState:
    """Turns engine deltas into chat chunks: role once first, content deltas, an empty delta with the finish
    reason, then (when asked) a usage chunk with no choices."""

    def __init__(self, meta: ResponseMeta, *, include_usage: bool) -> None:
        self._meta = meta
        self._include_usage = include_usage
        self._started = False

    def push(self, delta: GenerationDelta) -> Iterator[ChatCompletionChunk]:
        if not self._started:
            self._started = True
            yield self._chunk(ChatDelta(role="assistant", content=""))
        if delta.text:
            yield self._chunk(ChatDelta(content=delta.text))
        if delta.finish_reason is not None:
            yield self._chunk(ChatDelta(), finish_reason=delta.finish_reason)
            if self._include_usage:
                yield ChatCompletionChunk(
                    id=self._meta.id,
                    created=self._meta.created,
                    model=self._meta.model,
                    choices=[],
                    usage=self._meta.usage(delta.completion_tokens),
                )

    def _chunk(self, delta: ChatDelta, finish_reason: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self._meta.id,
            created=self._meta.created,
            model=self._meta.model,
            choices=[ChatChunkChoice(index=0, delta=delta, finish_reason=finish_reason)],  # type: ignore[arg-type]
        )


class CompletionStreamState:
    """Turns engine deltas into legacy completion chunks, with the same usage rule as chat."""

    def __init__(self, meta: ResponseMeta, *, include_usage: bool) -> None:
        self._meta = meta
        self._include_usage = include_usage

    def push(self, delta: GenerationDelta) -> Iterator[Completion]:
        if delta.text or delta.finish_reason is not None:
            yield self._chunk(delta.text, delta.finish_reason)
        if delta.finish_reason is not None and self._include_usage:
            yield Completion(
                id=self._meta.id,
                created=self._meta.created,
                model=self._meta.model,
                choices=[],
                usage=self._meta.usage(delta.completion_tokens),
            )

    def _chunk(self, text: str, finish_reason: str | None) -> Completion:
        return Completion(
            id=self._meta.id,
            created=self._meta.created,
            model=self._meta.model,
            choices=[CompletionChoice(index=0, text=text, finish_reason=finish_reason)],  # type: ignore[arg-type]
        )


def chat_completion(meta: ResponseMeta, text: str, last: GenerationDelta) -> ChatCompletion:
    return ChatCompletion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=[ChatChoice(index=0, message=AssistantMessage(content=text), finish_reason=last.finish_reason)],
        usage=meta.usage(last.completion_tokens),
    )


def completion(meta: ResponseMeta, text: str, last: GenerationDelta) -> Completion:
    return Completion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=[CompletionChoice(index=0, text=text, finish_reason=last.finish_reason)],
        usage=meta.usage(last.completion_tokens),
    )
