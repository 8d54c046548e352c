"""The one generation pipeline: a `GenerationPlan` in, one stream of reply events out.

Every generating endpoint of every protocol comes through here. Everything that can fail with a proper status
(limits, model lookup, tools and schemas, grammar compilation, context length, admission) happens in the awaited
`start`, before a stream is returned: the HTTP status is known before the first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.engine import Engine, GenerationDelta, GenerationRequest, SamplingParams
from server.errors import ContextLengthExceededError, InvalidRequestError, RequestTimeoutError
from server.generation import tools
from server.generation.json_schema_grammar import output_grammar
from server.generation.limits import RequestLimits, check_plan, check_token_cap
from server.generation.plan import GenerationPlan
from server.generation.prompt import conversation
from server.generation.reader import ReplyReader
from server.generation.reply import ReplyEvent
from server.generation.streams import relay
from server.metrics import Metrics, RequestRecord
from server.models.registry import ModelRegistry

GRAMMAR_BUDGET_S = 10.0


@dataclass(frozen=True)
class Generation:
    """A started generation: its reply events (every choice, merged; closing them cancels the generation)."""

    model: str  # as the client named it
    prompt_tokens: int
    choices: int
    events: AsyncIterator[ReplyEvent]


class GenerationPipeline:
    def __init__(
        self,
        registry: ModelRegistry,
        *,
        metrics: Metrics | None = None,
        limits: RequestLimits | None = None,
        request_timeout_s: float | None = None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics or Metrics()
        self._limits = limits or RequestLimits()
        self._timeout = request_timeout_s

    @property
    def limits(self) -> RequestLimits:
        return self._limits

    async def start(self, plan: GenerationPlan, record: RequestRecord) -> Generation:
        async with self._model(plan, record) as (engine, tool_plan):
            grammar = await self._grammar(engine, plan, tool_plan)
            tokens = await self._tokens(engine, plan, tool_plan)
            streams = await self._admit(engine, plan, tokens, grammar)
        self._metrics.observe_prompt(record, len(tokens))
        reader = ReplyReader(None if tool_plan is None else tool_plan.calls, plan.n)
        events = _Events(streams, relay([self._observed(stream, record) for stream in streams], reader.push))
        return Generation(model=plan.model, prompt_tokens=len(tokens), choices=plan.n, events=events)

    async def render(self, plan: GenerationPlan, record: RequestRecord) -> str:
        """The prompt a conversation becomes with the model's chat template, tool instructions included."""
        async with self._model(plan, record) as (engine, tool_plan):
            if plan.prompt is not None:
                return plan.prompt
            return await engine.render_chat(*conversation(plan.turns, tool_plan))

    async def count_tokens(self, plan: GenerationPlan, record: RequestRecord) -> int:
        """How many tokens the plan's prompt is for its model, tools included."""
        async with self._model(plan, record) as (engine, tool_plan):
            return len(await self._tokens(engine, plan, tool_plan))

    @contextlib.asynccontextmanager
    async def _model(
        self, plan: GenerationPlan, record: RequestRecord
    ) -> AsyncIterator[tuple[Engine, tools.ToolPlan | None]]:
        """Check the plan (a 400 before any model loads), then hold its model, with the tool plan for the
        model's chat template."""
        check_plan(plan, self._limits)
        # Off the event loop: checking every tool's schema is work in proportion to the request.
        await asyncio.to_thread(tools.check_schemas, plan.tools, plan.params)
        tools.plan(plan.tools, plan.params)
        spec = self._registry.resolve(plan.model)
        record.model = spec.name
        check_token_cap(plan.max_tokens, spec.max_tokens_cap, plan.params.max_tokens)
        async with self._registry.use(plan.model) as engine:
            if engine.info.embedding_dims is not None:
                raise InvalidRequestError(
                    f"The model `{plan.model}` is an embedding model; use /v1/embeddings.", param="model"
                )
            yield engine, tools.plan(plan.tools, plan.params, engine.info.tool_dialect)

    async def _tokens(self, engine: Engine, plan: GenerationPlan, tool_plan: tools.ToolPlan | None) -> list[int]:
        if plan.prompt is not None:
            return await engine.tokenize(plan.prompt)
        return await engine.tokenize_chat(*conversation(plan.turns, tool_plan))

    async def _grammar(self, engine: Engine, plan: GenerationPlan, tool_plan: tools.ToolPlan | None) -> str | None:
        """The output grammar, built here (a 400 past a bound) and compiled in the model's worker within a time
        budget, before the request is admitted: a grammar llama.cpp refuses is a 400, never an error event."""
        json_schema, blocks, where = plan.json_schema, None, plan.params.output_schema
        if tool_plan is not None and tool_plan.forced_schema is not None:
            json_schema, blocks, where = tool_plan.forced_schema, tool_plan.forced_blocks, plan.params.tools
        if json_schema is None:
            return None
        grammar = await asyncio.to_thread(output_grammar, json_schema, tool_call_blocks=blocks, path=where)
        try:
            async with asyncio.timeout(GRAMMAR_BUDGET_S):
                await engine.compile_grammar(grammar)
        except TimeoutError:
            raise InvalidRequestError(
                f"The output schema's grammar took longer than {GRAMMAR_BUDGET_S:g} s to build; simplify it.",
                param=where,
            ) from None
        return grammar

    async def _admit(
        self, engine: Engine, plan: GenerationPlan, tokens: list[int], grammar: str | None
    ) -> list[AsyncIterator[GenerationDelta]]:
        """One engine stream per choice, all admitted or none."""
        n_ctx, where = engine.info.n_ctx, plan.params.prompt
        room = n_ctx - len(tokens)
        max_tokens = room if plan.max_tokens is None else plan.max_tokens
        if room <= 0 or max_tokens > room:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                f"{len(tokens) + max(max_tokens, 0)} tokens ({len(tokens)} in the {where}, "
                f"{max(max_tokens, 0)} in the completion). Please reduce the length of the {where} or completion.",
                param=where,
            )
        sampling = self._sampling(plan, engine.info.n_vocab)
        streams: list[AsyncIterator[GenerationDelta]] = []
        try:
            # n choices are n requests with the same prompt: the engine's prefix cache evaluates it once.
            for choice in range(plan.n):
                seed = None if sampling.seed is None else sampling.seed + choice
                request = GenerationRequest(
                    prompt_tokens=tokens,
                    max_tokens=max_tokens,
                    sampling=dataclasses.replace(sampling, seed=seed),
                    stop=list(plan.stop),
                    logprobs=plan.logprobs,
                    grammar=grammar,
                )
                streams.append(engine.generate(request))
        except BaseException:
            for stream in streams:
                await stream.aclose()  # type: ignore[attr-defined]
            raise
        return streams

    @staticmethod
    def _sampling(plan: GenerationPlan, n_vocab: int) -> SamplingParams:
        wanted = plan.sampling
        for token, _ in wanted.logit_bias:
            if token >= n_vocab:
                raise InvalidRequestError(
                    f"Invalid key in '{plan.params.logit_bias}': {token} is not a token id of this model "
                    f"(0 to {n_vocab - 1}).",
                    param=plan.params.logit_bias,
                )
        return wanted

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


class _Events:
    """A generation's reply events. Closing them closes the engine streams too, even when iteration never
    started (an unstarted async generator runs none of its cleanup): each admitted choice is given back."""

    def __init__(self, streams: list[AsyncIterator[GenerationDelta]], events: AsyncIterator[ReplyEvent]) -> None:
        self._streams = streams
        self._events = events

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> ReplyEvent:
        return await anext(self._events)

    async def aclose(self) -> None:
        await self._events.aclose()  # type: ignore[attr-defined]
        for stream in self._streams:
            await stream.aclose()  # type: ignore[attr-defined]
