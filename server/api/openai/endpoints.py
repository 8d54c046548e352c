"""The OpenAI endpoints' use cases over the one pipeline: request -> plan -> reply events -> wire objects."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

from server.api.openai.assembly import (
    ChatStreamState,
    CompletionStreamState,
    ResponseMeta,
    chat_completion,
    completion,
)
from server.api.openai.plans import chat_plan, completion_plan, include_usage, off_loop
from server.api.openai.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
)
from server.generation.pipeline import GenerationPipeline
from server.generation.reply import ReplyEvent, finished
from server.metrics import RequestRecord

T = TypeVar("T")


async def chat(pipeline: GenerationPipeline, body: ChatCompletionRequest, record: RequestRecord) -> ChatCompletion:
    generation = await pipeline.start(await off_loop(chat_plan, body), record)
    meta = ResponseMeta(body.model, generation.prompt_tokens, "chatcmpl", thinking=generation.thinking)
    return chat_completion(meta, await finished(generation.events, generation.choices), bool(body.logprobs))


async def chat_stream(
    pipeline: GenerationPipeline, body: ChatCompletionRequest, record: RequestRecord
) -> AsyncIterator[ChatCompletionChunk]:
    generation = await pipeline.start(await off_loop(chat_plan, body), record)
    meta = ResponseMeta(body.model, generation.prompt_tokens, "chatcmpl", thinking=generation.thinking)
    state = ChatStreamState(meta, include_usage=include_usage(body), n=generation.choices, logprobs=bool(body.logprobs))
    return rendered(generation.events, state.push)


async def complete(pipeline: GenerationPipeline, body: CompletionRequest, record: RequestRecord) -> Completion:
    generation = await pipeline.start(await off_loop(completion_plan, body), record)
    meta = ResponseMeta(model=body.model, prompt_tokens=generation.prompt_tokens, id_prefix="cmpl")
    return completion(meta, await finished(generation.events, generation.choices), body.logprobs is not None)


async def complete_stream(
    pipeline: GenerationPipeline, body: CompletionRequest, record: RequestRecord
) -> AsyncIterator[Completion]:
    generation = await pipeline.start(await off_loop(completion_plan, body), record)
    meta = ResponseMeta(model=body.model, prompt_tokens=generation.prompt_tokens, id_prefix="cmpl")
    state = CompletionStreamState(
        meta, include_usage=include_usage(body), n=generation.choices, logprobs=body.logprobs is not None
    )
    return rendered(generation.events, state.push)


async def rendered(events: AsyncIterator[ReplyEvent], push: Callable[[ReplyEvent], Iterator[T]]) -> AsyncIterator[T]:
    """Reply events as wire objects; closing this closes the events, which cancels the generation."""
    async with contextlib.aclosing(events) as source:  # type: ignore[type-var]
        async for event in source:
            for item in push(event):
                yield item
