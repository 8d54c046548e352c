"""Framework-free use cases: list models, chat, complete.

Everything that can fail with a proper status (lookup, validation, context check, admission) happens in the
awaited call, before a stream is returned: the HTTP status is known before the first byte.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from server.chunks import ChatStreamState, CompletionStreamState, ResponseMeta, chat_completion, completion
from server.engine import Engine, GenerationDelta, GenerationRequest, SamplingParams
from server.errors import ContextLengthExceededError, InvalidRequestError, UnsupportedParameterError
from server.registry import ModelRegistry
from server.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
    SamplingFields,
)

T = TypeVar("T")

# Roles most chat templates know; OpenAI's newer "developer" role is a system message to them.
_TEMPLATE_ROLES = {"developer": "system"}


@dataclass(frozen=True)
class _Prepared:
    meta: ResponseMeta
    stream: AsyncIterator[GenerationDelta]


class InferenceService:
    def __init__(self, registry: ModelRegistry, *, created: int = 0) -> None:
        self._registry = registry
        self._created = created

    def list_models(self) -> ModelList:
        return ModelList(data=[self._card(spec.name, spec.owned_by) for spec in self._registry.specs()])

    def get_model(self, model_id: str) -> ModelCard:
        spec = self._registry.resolve(model_id)
        return self._card(model_id, spec.owned_by)

    async def chat(self, body: ChatCompletionRequest) -> ChatCompletion:
        prepared = await self._prepare_chat(body)
        text, last = await _collect(prepared.stream)
        return chat_completion(prepared.meta, text, last)

    async def chat_stream(self, body: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        prepared = await self._prepare_chat(body)
        state = ChatStreamState(prepared.meta, include_usage=_include_usage(body))
        return _relay(prepared.stream, state.push)

    async def complete(self, body: CompletionRequest) -> Completion:
        prepared = await self._prepare_completion(body)
        text, last = await _collect(prepared.stream)
        return completion(prepared.meta, text, last)

    async def complete_stream(self, body: CompletionRequest) -> AsyncIterator[Completion]:
        prepared = await self._prepare_completion(body)
        state = CompletionStreamState(prepared.meta, include_usage=_include_usage(body))
        return _relay(prepared.stream, state.push)

    async def _prepare_chat(self, body: ChatCompletionRequest) -> _Prepared:
        _reject_unsupported_chat(body)
        engine = await self._registry.engine(body.model)
        prompt = engine.render_chat([_template_message(m) for m in body.messages])
        return self._start(engine, body, engine.tokenize(prompt), body.token_limit(), "chatcmpl", "messages")

    async def _prepare_completion(self, body: CompletionRequest) -> _Prepared:
        _reject_unsupported_completion(body)
        engine = await self._registry.engine(body.model)
        tokens = engine.tokenize(body.prompt_text())
        return self._start(engine, body, tokens, body.max_tokens, "cmpl", "prompt")

    def _start(
        self, engine: Engine, body: SamplingFields, tokens: list[int], limit: int | None, prefix: str, param: str
    ) -> _Prepared:
        n_ctx = engine.info.n_ctx
        room = n_ctx - len(tokens)
        max_tokens = room if limit is None else limit
        if room <= 0 or max_tokens > room:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                f"{len(tokens) + max(max_tokens, 0)} tokens ({len(tokens)} in the {param}, "
                f"{max(max_tokens, 0)} in the completion). Please reduce the length of the {param} or completion.",
                param=param,
            )
        request = GenerationRequest(
            prompt_tokens=tokens,
            max_tokens=max_tokens,
            sampling=_sampling(body, engine.info.n_vocab),
            stop=body.stop_list(),
        )
        meta = ResponseMeta(model=body.model, prompt_tokens=len(tokens), id_prefix=prefix)
        return _Prepared(meta=meta, stream=engine.generate(request))

    def _card(self, model_id: str, owned_by: str) -> ModelCard:
        return ModelCard(id=model_id, created=self._created, owned_by=owned_by)


def _sampling(body: SamplingFields, n_vocab: int) -> SamplingParams:
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repeat_penalty=body.repeat_penalty or 1.0,
        seed=body.seed,
        logit_bias=_logit_bias(body.logit_bias or {}, n_vocab),
        ignore_eos=body.ignore_eos,
    )


def _logit_bias(bias: dict[str, float], n_vocab: int) -> tuple[tuple[int, float], ...]:
    out = []
    for key, value in bias.items():
        if not (key.isdigit() and int(key) < n_vocab):
            raise InvalidRequestError(
                f"Invalid key in 'logit_bias': {key!r} is not a token id of this model (0 to {n_vocab - 1}).",
                param="logit_bias",
            )
        out.append((int(key), value))
    return tuple(out)


def _template_message(message: ChatMessage) -> dict[str, Any]:
    return {"role": _TEMPLATE_ROLES.get(message.role, message.role), "content": message.text()}


def _include_usage(body: SamplingFields) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


def _reject(param: str, what: str) -> None:
    raise UnsupportedParameterError(f"'{param}' is not supported by this server yet: {what}.", param=param)


def _reject_common(body: SamplingFields) -> None:
    if body.n not in (None, 1):
        _reject("n", "only one choice per request (n=1) is generated")


def _reject_unsupported_chat(body: ChatCompletionRequest) -> None:
    _reject_common(body)
    if body.tools:
        _reject("tools", "tool calling is not available")
    if body.tool_choice not in (None, "none"):
        _reject("tool_choice", "tool calling is not available")
    if body.response_format and body.response_format.get("type") != "text":
        _reject("response_format", "only {'type': 'text'} is available")
    if body.logprobs:
        _reject("logprobs", "log probabilities are not returned")
    if body.top_logprobs:
        _reject("top_logprobs", "log probabilities are not returned")


def _reject_unsupported_completion(body: CompletionRequest) -> None:
    _reject_common(body)
    if body.echo:
        _reject("echo", "the prompt is not echoed")
    if body.logprobs is not None:
        _reject("logprobs", "log probabilities are not returned")
    if body.best_of not in (None, 1):
        _reject("best_of", "only best_of=1 is generated")
    if body.suffix:
        _reject("suffix", "insertion (suffix) is not available")


async def _collect(stream: AsyncIterator[GenerationDelta]) -> tuple[str, GenerationDelta]:
    parts: list[str] = []
    last: GenerationDelta | None = None
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for delta in stream:
            parts.append(delta.text)
            last = delta
    if last is None or last.finish_reason is None:
        raise RuntimeError("engine stream ended without a finish reason")
    return "".join(parts), last


async def _relay(
    stream: AsyncIterator[GenerationDelta], push: Callable[[GenerationDelta], Iterator[T]]
) -> AsyncIterator[T]:
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for delta in stream:
            for item in push(delta):
                yield item
