"""The one generation pipeline: a `GenerationPlan` in, one stream of reply events out.

Every generating endpoint of every protocol comes through here. Everything that can fail with a proper status
(limits, model lookup, tools and schemas, grammar compilation, context length, admission) happens in the awaited
`start`, before a stream is returned: the HTTP status is known before the first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from server.engine import Engine, GenerationDelta, GenerationRequest, SamplingParams
from server.engine.base import GRAMMAR_BUILD_BUDGET_S, Priority, RGBImage, ThinkingBudget
from server.engine.kinds import info_kind, require_kind, spec_kind
from server.errors import (
    APIError,
    ContextLengthExceededError,
    GrammarTooComplexError,
    InvalidRequestError,
    RequestTimeoutError,
)
from server.generation import tools
from server.generation.image_markers import SHOWN_IMAGE_MARKER, image_marker, images_of, with_image_markers
from server.generation.images import (
    DEFAULT_IMAGE_MEMORY_BYTES,
    ImageLimits,
    ImageMemory,
    RequestImages,
    load_images,
)
from server.generation.json_schema_grammar import output_grammar
from server.generation.limits import RequestLimits, check_plan, check_token_cap
from server.generation.plan import GenerationPlan
from server.generation.prompt import conversation
from server.generation.reader import ReplyReader
from server.generation.reply import ReplyEvent
from server.generation.streams import relay
from server.generation.thinking import Thinking, reply_start, thinking_of
from server.metrics import Metrics, RequestRecord
from server.models.registry import ModelRegistry

GRAMMAR_BUDGET_S = GRAMMAR_BUILD_BUDGET_S


@dataclass(frozen=True)
class Generation:
    """A started generation: its reply events (every choice, merged; closing them cancels the generation)."""

    model: str  # as the client named it
    prompt_tokens: int
    choices: int
    events: AsyncIterator[ReplyEvent]
    thinking: bool = False  # a reasoning model's thinking is split off its answer (and its tokens counted)


class GenerationPipeline:
    def __init__(
        self,
        registry: ModelRegistry,
        *,
        metrics: Metrics | None = None,
        limits: RequestLimits | None = None,
        request_timeout_s: float | None = None,
        image_limits: ImageLimits | None = None,
        image_memory: ImageMemory | None = None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics or Metrics()
        self._limits = limits or RequestLimits()
        self._image_limits = image_limits or ImageLimits()
        self._image_memory = image_memory or ImageMemory(DEFAULT_IMAGE_MEMORY_BYTES)
        self._timeout = request_timeout_s
        self._priority: Priority = "interactive"

    @property
    def limits(self) -> RequestLimits:
        return self._limits

    def with_priority(self, priority: Priority) -> GenerationPipeline:
        """This pipeline, admitting its generations at `priority`: `batch` runs only in free sequences and gives
        them up to interactive requests (server/engine/batching.py)."""
        view = copy.copy(self)
        view._priority = priority
        return view

    async def start(self, plan: GenerationPlan, record: RequestRecord) -> Generation:
        async with self._model(plan, record, keep_images=True) as (engine, tool_plan, images):
            if self._priority == "batch":
                engine.check_batch_room(plan.n)  # before rendering or a grammar: batch work often waits for room
            thinking = thinking_of(plan, engine.info.reasoning)
            tokens = await self._tokens(engine, plan, tool_plan, thinking, images)
            start = None if thinking is None else await reply_start(engine, tokens, thinking)
            behind = None if thinking is None or start is None else functools.partial(thinking.grammar, start=start)
            grammar = await self._grammar(engine, plan, tool_plan, behind)
            budget = None if thinking is None or start is None else thinking.budget(start)
            shown = tools.shown_tokens(tool_plan)
            if thinking is not None:  # markers that are control tokens must come out as text to be split off
                shown = (*shown, thinking.format.start, thinking.format.end)
            streams = await self._admit(engine, plan, tokens, grammar, budget, shown, tuple(images.decoded))
        self._metrics.observe_prompt(record, len(tokens))
        split = None if thinking is None or start is None else (thinking.format, start)
        reader = ReplyReader(None if tool_plan is None else tool_plan.calls, plan.n, split)
        where = _constraint_param(plan, tool_plan)
        observed = [self._observed(stream, record, where) for stream in streams]
        events = _Events(streams, relay(observed, reader.push), images.release)
        return Generation(plan.model, len(tokens), plan.n, events, thinking=split is not None)

    async def render(self, plan: GenerationPlan, record: RequestRecord) -> str:
        """The prompt a conversation becomes with the model's chat template, tool instructions included."""
        async with self._model(plan, record, decode_images=False) as (engine, tool_plan, _):
            if plan.prompt is not None:
                return plan.prompt
            thinking = thinking_of(plan, engine.info.reasoning)
            shown = conversation(
                with_image_markers(plan.turns, SHOWN_IMAGE_MARKER), tool_plan, engine.info.tool_dialect
            )
            return await engine.render_chat(*shown, _template_vars(thinking))

    async def count_tokens(self, plan: GenerationPlan, record: RequestRecord) -> int:
        """How many tokens the plan's prompt is for its model, tools included."""
        async with self._model(plan, record) as (engine, tool_plan, images):
            thinking = thinking_of(plan, engine.info.reasoning)
            return len(await self._tokens(engine, plan, tool_plan, thinking, images))

    @contextlib.asynccontextmanager
    async def _model(
        self, plan: GenerationPlan, record: RequestRecord, *, decode_images: bool = True, keep_images: bool = False
    ) -> AsyncIterator[tuple[Engine, tools.ToolPlan | None, RequestImages]]:
        """Check the plan (a 400 before any model loads), decode its images, then hold its model, with the tool
        plan for the model's chat template. The images' share of the image memory is given back on leaving,
        unless `keep_images` (then when the caller says: on success, when its generation ends)."""
        check_plan(plan, self._limits)
        # Off the event loop: checking every tool's schema is work in proportion to the request.
        await asyncio.to_thread(tools.check_schemas, plan.tools, plan.params)
        tools.plan(plan.tools, plan.params)
        spec = self._registry.resolve(plan.model)
        record.model = spec.name
        require_kind(plan.model, spec_kind(spec), "generative")  # before an embedding model or reranker loads
        check_token_cap(plan.max_tokens, spec.max_tokens_cap, plan.params.max_tokens)
        inputs = images_of(plan)
        if inputs and spec.mmproj is None:
            raise InvalidRequestError(
                f"The model `{plan.model}` does not take images (it has no vision projector).", param=inputs[0].where
            )
        images = RequestImages()
        if inputs and decode_images:
            images.decoded, images.reservation = await load_images(inputs, self._image_limits, self._image_memory)
        try:
            async with self._registry.use(plan.model, self._priority) as engine:
                require_kind(plan.model, info_kind(engine.info), "generative")
                yield engine, tools.plan(plan.tools, plan.params, engine.info.tool_dialect), images
        except BaseException:
            images.release()
            raise
        if not keep_images:
            images.release()

    async def _tokens(
        self,
        engine: Engine,
        plan: GenerationPlan,
        tool_plan: tools.ToolPlan | None,
        thinking: Thinking | None,
        images: RequestImages,
    ) -> list[int]:
        if plan.prompt is not None:
            return await engine.tokenize(plan.prompt)
        if not images.decoded:
            shown = conversation(plan.turns, tool_plan, engine.info.tool_dialect)
            return await engine.tokenize_chat(*shown, _template_vars(thinking))
        marker = image_marker()
        shown = conversation(with_image_markers(plan.turns, marker), tool_plan, engine.info.tool_dialect)
        return await engine.tokenize_chat(*shown, _template_vars(thinking), images.decoded, marker)

    async def _grammar(
        self,
        engine: Engine,
        plan: GenerationPlan,
        tool_plan: tools.ToolPlan | None,
        behind_thinking: Callable[[str], str] | None = None,
    ) -> str | None:
        """The output grammar, built here (a 400 past a bound) and compiled in the model's worker within a time
        budget, before the request is admitted: a grammar llama.cpp refuses is a 400, never an error event.
        `behind_thinking` puts the final grammar behind a reasoning model's thinking block."""
        json_schema, where = plan.json_schema, plan.params.output_schema
        from_schema = json_schema is not None  # a grammar this server built from a JSON schema (or a tool's)
        if tool_plan is not None and tool_plan.forced is not None:
            grammar = await asyncio.to_thread(tools.forced_grammar, tool_plan)
            where, from_schema = plan.params.tools, True
        elif json_schema is not None:
            grammar = await asyncio.to_thread(output_grammar, json_schema, path=where)
        elif plan.grammar is not None:  # a GBNF grammar the adapter built or checked
            grammar, where = plan.grammar, plan.params.output_grammar
        else:
            return None
        if behind_thinking is not None:
            grammar = behind_thinking(grammar)
        try:
            async with asyncio.timeout(GRAMMAR_BUDGET_S):
                await engine.compile_grammar(grammar)
        except TimeoutError:
            raise GrammarTooComplexError(
                f"The output grammar took longer than {GRAMMAR_BUDGET_S:g} s to build; simplify it.",
                param=where,
            ) from None
        except APIError as exc:  # llama.cpp refused it: a 400 naming the field that asked for it
            if exc.status_code != 400:
                raise
            if exc.code == GrammarTooComplexError.code:
                raise GrammarTooComplexError(exc.message, param=where) from None
            message = exc.message if from_schema else _refused(where)
            raise InvalidRequestError(message, param=where) from None
        return grammar

    async def _admit(
        self,
        engine: Engine,
        plan: GenerationPlan,
        tokens: list[int],
        grammar: str | None,
        thinking: ThinkingBudget | None = None,
        shown: tuple[str, ...] = (),
        images: tuple[RGBImage, ...] = (),
    ) -> list[AsyncIterator[GenerationDelta]]:
        """One engine stream per choice, all admitted or none. `shown`: control tokens the replies show as text
        (the markers of the model's tool-call syntax)."""
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
        if self._priority == "batch":
            engine.check_batch_room(plan.n)  # again: from here to the last `generate` nothing else runs
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
                    thinking=thinking,
                    grammar_step_limit_s=self._limits.grammar_step_limit_s,
                    shown_tokens=shown,
                    priority=self._priority,
                    images=images,
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
        self, stream: AsyncIterator[GenerationDelta], record: RequestRecord, grammar_param: str | None = None
    ) -> AsyncIterator[GenerationDelta]:
        """The engine's deltas, counted into the metrics and cut off at the request timeout; a grammar the
        scheduler found too slow to follow is named by the field that asked for it (`grammar_param`)."""
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
                except APIError as exc:
                    if exc.code != GrammarTooComplexError.code or exc.param is not None:
                        raise
                    raise GrammarTooComplexError(exc.message, param=grammar_param) from None
                now = time.monotonic()
                if delta.completion_tokens > seen:
                    self._metrics.observe_tokens(record, delta.completion_tokens - seen, now, previous_at)
                    seen, previous_at = delta.completion_tokens, now
                yield delta


def _template_vars(thinking: Thinking | None) -> dict[str, Any] | None:
    return None if thinking is None else thinking.template_vars


def _constraint_param(plan: GenerationPlan, tool_plan: tools.ToolPlan | None) -> str | None:
    """The request field whose output grammar the generation follows (as `_grammar` chooses it)."""
    if tool_plan is not None and tool_plan.forced is not None:
        return plan.params.tools
    if plan.json_schema is not None:
        return plan.params.output_schema
    return plan.params.output_grammar if plan.grammar is not None else None


def _refused(where: str) -> str:
    return (
        f"llama.cpp refused the grammar of '{where}': it reads no left-recursive rule (one that can begin with "
        "itself) and no token reference that is not exactly one token of this model."
    )


class _Events:
    """A generation's reply events. Closing them closes the engine streams too, even when iteration never
    started (an unstarted async generator runs none of its cleanup): each admitted choice is given back, and
    the images' share of the image memory (also when the events run out)."""

    def __init__(
        self,
        streams: list[AsyncIterator[GenerationDelta]],
        events: AsyncIterator[ReplyEvent],
        ended: Callable[[], None] = lambda: None,
    ) -> None:
        self._streams = streams
        self._events = events
        self._ended = ended

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> ReplyEvent:
        try:
            return await anext(self._events)
        except StopAsyncIteration:
            self._ended()
            raise

    async def aclose(self) -> None:
        try:
            await self._events.aclose()  # type: ignore[attr-defined]
            for stream in self._streams:
                await stream.aclose()  # type: ignore[attr-defined]
        finally:
            self._ended()
