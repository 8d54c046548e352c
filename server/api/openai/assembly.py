"""Reply events to OpenAI chat and legacy completion objects: small pure builders, streamed and not."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from server.api.openai.schemas import (
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
    CompletionTokensDetails,
    FunctionCall,
    ToolCallOut,
    TopLogprob,
    Usage,
)
from server.engine.base import TokenLogprob
from server.generation.reply import (
    ChoiceEnd,
    FinishedChoice,
    ReasoningPiece,
    ReplyEvent,
    TextPiece,
    ToolCallArguments,
    ToolCallStart,
)


@dataclass
class ResponseMeta:
    """What every object of one response shares."""

    model: str
    prompt_tokens: int
    id_prefix: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    thinking: bool = False  # a reasoning model's reply: its thinking tokens are counted in the usage

    def __post_init__(self) -> None:
        self.id = self.id or f"{self.id_prefix}-{uuid.uuid4().hex}"

    def usage(self, completion_tokens: int, reasoning_tokens: int = 0) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=self.prompt_tokens + completion_tokens,
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning_tokens)
            if self.thinking
            else None,
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


class _UsageTally:
    """Completion tokens of each choice; the usage chunk goes out once every choice has finished."""

    def __init__(self, meta: ResponseMeta, *, n: int, include_usage: bool) -> None:
        self._meta = meta
        self._n = n
        self._include_usage = include_usage
        self._tokens: dict[int, tuple[int, int]] = {}

    def finish(self, end: ChoiceEnd) -> Usage | None:
        self._tokens[end.choice] = (end.completion_tokens, end.reasoning_tokens)
        if self._include_usage and len(self._tokens) == self._n:
            ends = self._tokens.values()
            return self._meta.usage(sum(tokens for tokens, _ in ends), sum(thinking for _, thinking in ends))
        return None


class ChatStreamState:
    """Reply events to chat chunks: the role once first, content deltas, tool calls as they stream (a call's id,
    type and name in its first delta, then its arguments a piece at a time), an empty delta with the finish reason;
    when asked, a usage chunk with no choices after the last choice has finished."""

    def __init__(self, meta: ResponseMeta, *, include_usage: bool, n: int = 1, logprobs: bool = False) -> None:
        self._meta = meta
        self._usage = _UsageTally(meta, n=n, include_usage=include_usage)
        self._started: set[int] = set()
        self._with_content: set[int] = set()  # choices whose content has been sent (if only as "")
        self._calls: dict[int, int] = {}  # per choice, the calls begun so far
        self._logprobs = logprobs

    def push(self, event: ReplyEvent) -> Iterator[ChatCompletionChunk]:
        index = event.choice
        if index not in self._started:
            self._started.add(index)
            # Content as the response not streamed has it: null for a reply of tool calls, else a string. A
            # reasoning model's reply may still turn out either way: its content waits.
            content = None if isinstance(event, ToolCallStart | ReasoningPiece) else ""
            if content is not None:
                self._with_content.add(index)
            yield self._chunk(index, ChatDelta(role="assistant", content=content))
        if isinstance(event, TextPiece):
            self._with_content.add(index)
            logprobs = chat_logprobs(event.logprobs) if self._logprobs and event.logprobs else None
            yield self._chunk(index, ChatDelta(content=event.text), logprobs=logprobs)
        elif isinstance(event, ReasoningPiece):
            yield self._chunk(index, ChatDelta(reasoning_content=event.text))
        elif isinstance(event, ToolCallStart):
            position = self._calls[index] = self._calls.get(index, -1) + 1
            function = {"name": event.name, "arguments": ""}
            call = {"index": position, "id": event.id, "type": "function", "function": function}
            yield self._chunk(index, ChatDelta(tool_calls=[call]))
        elif isinstance(event, ToolCallArguments):
            call = {"index": self._calls[index], "function": {"arguments": event.text}}
            yield self._chunk(index, ChatDelta(tool_calls=[call]))
        else:
            logprobs = chat_logprobs(event.logprobs) if self._logprobs and event.logprobs else None
            # A reply that ended with no text and no calls (cut off while thinking) has "" content, as non-streamed.
            empty = "" if index not in self._with_content and index not in self._calls else None
            yield self._chunk(index, ChatDelta(content=empty), finish_reason=event.reason, logprobs=logprobs)
            usage = self._usage.finish(event)
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
    """Reply events to legacy completion chunks, with the same usage rule as chat."""

    def __init__(self, meta: ResponseMeta, *, include_usage: bool, n: int = 1, logprobs: bool = False) -> None:
        self._meta = meta
        self._usage = _UsageTally(meta, n=n, include_usage=include_usage)
        self._logprobs = logprobs
        self._offsets: dict[int, int] = {}

    def push(self, event: ReplyEvent) -> Iterator[Completion]:
        if isinstance(event, ToolCallStart | ToolCallArguments | ReasoningPiece):  # no tools nor chat template here
            return
        index = event.choice
        text = event.text if isinstance(event, TextPiece) else ""
        reason = event.reason if isinstance(event, ChoiceEnd) else None
        logprobs = None
        if self._logprobs:
            logprobs = completion_logprobs(event.logprobs, self._offsets.get(index, 0))
            self._offsets[index] = self._offsets.get(index, 0) + sum(len(t) for t in logprobs.tokens)
        yield self._chunk(index, text, reason, logprobs)
        if isinstance(event, ChoiceEnd):
            usage = self._usage.finish(event)
            if usage is not None:
                yield Completion(
                    id=self._meta.id, created=self._meta.created, model=self._meta.model, choices=[], usage=usage
                )

    def _chunk(
        self, index: int, text: str, finish_reason: str | None, logprobs: CompletionLogprobs | None
    ) -> Completion:
        choice = CompletionChoice(index=index, text=text, finish_reason=finish_reason, logprobs=logprobs)  # type: ignore[arg-type]
        return Completion(id=self._meta.id, created=self._meta.created, model=self._meta.model, choices=[choice])


def chat_completion(meta: ResponseMeta, finished: list[FinishedChoice], logprobs: bool) -> ChatCompletion:
    choices = []
    for i, choice in enumerate(finished):
        if choice.calls:
            tool_calls = [
                ToolCallOut(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in choice.calls
            ]
            message = AssistantMessage(
                content=choice.text or None, tool_calls=tool_calls, reasoning_content=choice.reasoning or None
            )  # the text, when the model wrote some before its calls
        else:
            message = AssistantMessage(content=choice.text, reasoning_content=choice.reasoning or None)
        choices.append(
            ChatChoice(
                index=i,
                message=message,
                finish_reason=choice.end.reason,
                logprobs=chat_logprobs(choice.logprobs) if logprobs else None,
            )
        )
    return ChatCompletion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=choices,
        usage=meta.usage(
            sum(choice.end.completion_tokens for choice in finished),
            sum(choice.end.reasoning_tokens for choice in finished),
        ),
    )


def completion(meta: ResponseMeta, finished: list[FinishedChoice], logprobs: bool) -> Completion:
    return Completion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=[
            CompletionChoice(
                index=i,
                text=choice.text,
                finish_reason=choice.end.reason,  # type: ignore[arg-type]
                logprobs=completion_logprobs(choice.logprobs) if logprobs else None,
            )
            for i, choice in enumerate(finished)
        ],
        usage=meta.usage(sum(choice.end.completion_tokens for choice in finished)),
    )
