"""Framework-free use cases: list models, chat, complete.

Everything that can fail with a proper status (lookup, validation, context check, admission) happens in the
awaited call, before a stream is returned: the HTTP status is known before the first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from server import params, tools
from server.chunks import (
    ChatStreamState,
    CompletionStreamState,
    ResponseMeta,
    chat_completion,
    completion,
)
from server.config import ModelSpec
from server.embeddings import EmbeddingAdmission, EmbeddingList, EmbeddingRequest, embed
from server.engine import Engine, GenerationDelta, GenerationRequest
from server.errors import APIError, ContextLengthExceededError, InvalidRequestError, RequestTimeoutError
from server.json_grammar import output_grammar
from server.metrics import EngineSnapshot, Metrics, RequestRecord
from server.params import RequestLimits
from server.registry import ModelRegistry
from server.response_format import json_schema_of
from server.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
    SamplingFields,
)
from server.streams import collect, relay

logger = logging.getLogger(__name__)
SCRAPE_TIMEOUT_S = 2.0
GRAMMAR_BUDGET_S = 10.0


@dataclass(frozen=True)
class _Prepared:
    meta: ResponseMeta
    streams: list[AsyncIterator[GenerationDelta]]  # one per choice
    functions: tools.CallFormat | None = None  # tools the reply may call, and their syntax


class InferenceService:
    def __init__(
        self,
        registry: ModelRegistry,
        *,
        metrics: Metrics | None = None,
        limits: RequestLimits | None = None,
        request_timeout_s: float | None = None,
        preload: tuple[str, ...] = (),
        created: int = 0,
    ) -> None:
        self._registry = registry
        self._metrics = metrics or Metrics()
        self._limits = limits or RequestLimits()
        self._timeout = request_timeout_s
        self._preload = preload
        self._created = created
        self._embedding_admission = EmbeddingAdmission()

    async def preload(self) -> None:
        """Load the `preload` models one after the other; a failure is logged and leaves /ready red."""
        for name in self._preload:
            try:
                await self._registry.engine(name)
            except APIError as exc:
                logger.error("preloading %s failed: %s", name, exc.message)

    def missing_preloads(self) -> list[str]:
        loaded = self._registry.loaded()
        return [name for name in self._preload if not (name in loaded and loaded[name].alive)]

    async def scrape_metrics(self) -> bytes:
        """Fresh engine counters from every live worker, then the whole exposition."""
        snapshots = {}
        for name, engine in self._registry.loaded().items():
            if not engine.alive:
                continue
            with contextlib.suppress(APIError, TimeoutError):
                counters = await asyncio.wait_for(engine.counters(), SCRAPE_TIMEOUT_S)
                snapshots[name] = EngineSnapshot(
                    queue_depth=counters.queue_depth,
                    active_sequences=counters.active_sequences,
                    decode_steps=counters.decode_steps,
                    batch_tokens_total=counters.batch_tokens_total,
                    prefix_cache_hit_tokens=counters.prefix_cache_hit_tokens,
                )
        self._metrics.engines.snapshots = snapshots
        return self._metrics.render()

    async def embeddings(self, body: EmbeddingRequest, record: RequestRecord | None = None) -> EmbeddingList:
        """Embed within the request timeout; past it (or when the client leaves) the worker stops too."""
        record = record or _record()
        delay = None if self._timeout is None else self._timeout - (time.monotonic() - record.started)
        try:
            async with asyncio.timeout(delay):
                return await embed(self._registry, body, record, self._limits, self._embedding_admission)
        except TimeoutError:
            raise RequestTimeoutError(self._timeout or 0) from None

    def list_models(self) -> ModelList:
        return ModelList(data=[self._card(spec.name, spec) for spec in self._registry.specs()])

    def get_model(self, model_id: str) -> ModelCard:
        return self._card(model_id, self._registry.resolve(model_id))

    async def chat(self, body: ChatCompletionRequest, record: RequestRecord | None = None) -> ChatCompletion:
        prepared = await self._prepare_chat(body, record or _record())
        finished = await collect(prepared.streams, bool(body.logprobs))
        return chat_completion(prepared.meta, finished, prepared.functions)

    async def chat_stream(
        self, body: ChatCompletionRequest, record: RequestRecord | None = None
    ) -> AsyncIterator[ChatCompletionChunk]:
        prepared = await self._prepare_chat(body, record or _record())
        state = ChatStreamState(
            prepared.meta,
            include_usage=params.include_usage(body),
            n=len(prepared.streams),
            logprobs=bool(body.logprobs),
            functions=prepared.functions,
        )
        if prepared.functions is not None:
            for index in range(len(prepared.streams)):
                state.hold(index)
        return relay(prepared.streams, state.push)

    async def complete(self, body: CompletionRequest, record: RequestRecord | None = None) -> Completion:
        prepared = await self._prepare_completion(body, record or _record())
        return completion(prepared.meta, await collect(prepared.streams, body.logprobs is not None))

    async def complete_stream(
        self, body: CompletionRequest, record: RequestRecord | None = None
    ) -> AsyncIterator[Completion]:
        prepared = await self._prepare_completion(body, record or _record())
        state = CompletionStreamState(
            prepared.meta,
            include_usage=params.include_usage(body),
            n=len(prepared.streams),
            logprobs=body.logprobs is not None,
        )
        return relay(prepared.streams, state.push)

    async def render_prompt(self, body: ChatCompletionRequest, record: RequestRecord | None = None) -> str:
        """The text a chat request becomes with the model's template, tool instructions included."""
        async with self._chat_model(body, record or _record()) as (engine, tool_plan):
            return await engine.render_chat(*_conversation(body, tool_plan))

    @contextlib.asynccontextmanager
    async def _chat_model(
        self, body: ChatCompletionRequest, record: RequestRecord
    ) -> AsyncIterator[tuple[Engine, tools.ToolPlan | None]]:
        """Check a chat request (a 400 before any model loads), then hold its model, with the tool plan for the
        model's chat template."""
        params.check_chat(body, self._limits)
        _tool_plan(body, None)
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        self._check_cap(body, record, body.token_limit(), param)
        async with self._registry.use(body.model) as engine:
            _check_generative(engine, body.model)
            yield engine, _tool_plan(body, engine.info.tool_dialect)

    async def _prepare_chat(self, body: ChatCompletionRequest, record: RequestRecord) -> _Prepared:
        json_schema = json_schema_of(body.response_format)
        async with self._chat_model(body, record) as (engine, tool_plan):
            call_blocks, where = None, "response_format"
            if tool_plan is not None and tool_plan.forced_schema is not None:
                json_schema = tool_plan.forced_schema  # a required call is enforced like a response schema
                call_blocks, where = tool_plan.forced_blocks, "tools"
            grammar = None
            if json_schema is not None:
                grammar = await _compiled_grammar(engine, json_schema, call_blocks, where)
            tokens = await engine.tokenize_chat(*_conversation(body, tool_plan))
            limit, logprobs = body.token_limit(), params.chat_logprobs(body)
            return await self._start(
                engine,
                body,
                record,
                tokens,
                limit,
                logprobs,
                "chatcmpl",
                "messages",
                grammar=grammar,
                functions=None if tool_plan is None else tool_plan.calls,
            )

    async def _prepare_completion(self, body: CompletionRequest, record: RequestRecord) -> _Prepared:
        params.check_completion(body, self._limits)
        self._check_cap(body, record, body.max_tokens, "max_tokens")
        async with self._registry.use(body.model) as engine:
            _check_generative(engine, body.model)
            tokens = await engine.tokenize(body.prompt_text())
            return await self._start(engine, body, record, tokens, body.max_tokens, body.logprobs, "cmpl", "prompt")

    def _check_cap(self, body: SamplingFields, record: RequestRecord, requested: int | None, param: str) -> None:
        spec = self._registry.resolve(body.model)
        record.model = spec.name
        params.check_token_cap(requested, spec.max_tokens_cap, param)

    async def _start(
        self,
        engine: Engine,
        body: SamplingFields,
        record: RequestRecord,
        tokens: list[int],
        limit: int | None,
        logprobs: int | None,
        prefix: str,
        param: str,
        *,
        grammar: str | None = None,
        functions: tools.CallFormat | None = None,
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
        sampling = params.sampling(body, engine.info.n_vocab)
        streams: list[AsyncIterator[GenerationDelta]] = []
        try:
            # n choices are n requests with the same prompt: the engine's prefix cache evaluates it once.
            for choice in range(body.n or 1):
                seed = None if sampling.seed is None else sampling.seed + choice
                request = GenerationRequest(
                    prompt_tokens=tokens,
                    max_tokens=max_tokens,
                    sampling=dataclasses.replace(sampling, seed=seed),
                    stop=body.stop_list(),
                    logprobs=logprobs,
                    grammar=grammar,
                )
                streams.append(engine.generate(request))
        except BaseException:
            for stream in streams:  # all choices are admitted, or none
                await stream.aclose()  # type: ignore[attr-defined]
            raise
        self._metrics.observe_prompt(record, len(tokens))
        meta = ResponseMeta(model=body.model, prompt_tokens=len(tokens), id_prefix=prefix)
        return _Prepared(meta=meta, streams=[self._observed(s, record) for s in streams], functions=functions)

    async def _observed(
        self, stream: AsyncIterator[GenerationDelta], record: RequestRecord
    ) -> AsyncIterator[GenerationDelta]:
        """The engine's deltas, counted into the metrics and cut off at the request timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if self._timeout is None else loop.time() + self._timeout - (time.monotonic() - record.started)
        seen, previous_at = 0, None
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        delta = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise RequestTimeoutError(self._timeout or 0) from None
                now = time.monotonic()
                if delta.completion_tokens > seen:
                    self._metrics.observe_tokens(record, delta.completion_tokens - seen, now, previous_at)
                    seen, previous_at = delta.completion_tokens, now
                yield delta

    def _card(self, model_id: str, spec: ModelSpec) -> ModelCard:
        engine = self._registry.loaded().get(spec.name)
        return ModelCard(
            id=model_id,
            created=self._created,
            owned_by=spec.owned_by,
            available=self._registry.available(spec),
            loaded=engine is not None and engine.alive,
        )


async def _compiled_grammar(engine: Engine, json_schema: str, call_blocks: int | None, where: str) -> str:
    """The output grammar, built here (a 400 past a bound) and compiled in the model's worker within a time
    budget, before the request is admitted: a grammar llama.cpp refuses is a 400, never an error event."""
    grammar = await asyncio.to_thread(output_grammar, json_schema, tool_call_blocks=call_blocks, path=where)
    try:
        async with asyncio.timeout(GRAMMAR_BUDGET_S):
            await engine.compile_grammar(grammar)
    except TimeoutError:
        raise InvalidRequestError(
            f"The output schema's grammar took longer than {GRAMMAR_BUDGET_S:g} s to build; simplify the schema.",
            param=where,
        ) from None
    return grammar


def _tool_plan(body: ChatCompletionRequest, dialect: str | None) -> tools.ToolPlan | None:
    return tools.plan(body.tools, body.tool_choice, body.parallel_tool_calls is not False, dialect)


def _conversation(
    body: ChatCompletionRequest, tool_plan: tools.ToolPlan | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and tools for the chat template: the template's own tool support where it has one we read,
    else tools in the system message."""
    native = tool_plan is not None and tool_plan.template_tools is not None
    messages = [params.template_message(m, native_tools=native) for m in body.messages]
    if tool_plan is not None:
        messages = tools.with_instructions(messages, tool_plan)
    return messages, tool_plan.template_tools if native else None


def _check_generative(engine: Engine, model: str) -> None:
    if engine.info.embedding_dims is not None:
        raise InvalidRequestError(f"The model `{model}` is an embedding model; use /v1/embeddings.", param="model")


def _record() -> RequestRecord:
    return RequestRecord(request_id="", method="", path="")
