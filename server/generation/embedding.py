"""Embeddings, in no protocol's terms: inputs (texts or token ids) to normalised vectors, within the limits.

An admission bound per model, a total-token cap per request, the request timeout, and cancellation that reaches
the worker (closing the awaiting task stops it between batches)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass
from typing import Self, TypeVar

from server.config import ModelSpec
from server.engine import Engine, EngineInfo
from server.engine.admission import Admission
from server.engine.base import Priority
from server.engine.kinds import info_kind, require_kind, spec_kind
from server.engine.room import RoomSignal
from server.errors import ContextLengthExceededError, InvalidRequestError, NoRoomForBatch, RequestTimeoutError
from server.generation.limits import RequestLimits
from server.metrics import RequestRecord
from server.models.registry import ModelRegistry

T = TypeVar("T")


@dataclass(frozen=True)
class EmbeddingPlan:
    model: str
    inputs: Sequence[str | Sequence[int]]
    dimensions: int | None = None  # checked against the model's vector size


@dataclass(frozen=True)
class Embedded:
    vectors: list[list[float]]
    tokens: int


class PooledWork:
    """What embedding and reranking share: the registry, the request limits and timeout, per-model admission."""

    def __init__(
        self, registry: ModelRegistry, *, limits: RequestLimits | None = None, request_timeout_s: float | None = None
    ) -> None:
        self._registry = registry
        self._limits = limits or RequestLimits()
        self._timeout = request_timeout_s
        self._admission = EmbeddingAdmission()
        self._priority: Priority = "interactive"

    def with_priority(self, priority: Priority) -> Self:
        """This service, admitting its requests at `priority` (the same admission counts, shared)."""
        view = copy.copy(self)
        view._priority = priority
        return view


class Embedder(PooledWork):
    async def embed(self, plan: EmbeddingPlan, record: RequestRecord) -> Embedded:
        """Embed within the request timeout; past it (or when the client leaves) the worker stops too."""
        return await within_request_timeout(self._embed(plan, record), self._timeout, record)

    async def _embed(self, plan: EmbeddingPlan, record: RequestRecord) -> Embedded:
        limits = self._limits
        if len(plan.inputs) > limits.max_embedding_inputs:
            raise InvalidRequestError(
                f"Too many inputs: {len(plan.inputs)}; this server embeds at most {limits.max_embedding_inputs} "
                "per request.",
                param="input",
            )
        spec = self._registry.resolve(plan.model)
        record.model = spec.name
        require_kind(plan.model, spec_kind(spec), "embedding")  # before a chat model or reranker loads
        _check_total(sum(len(item) for item in plan.inputs if not isinstance(item, str)), limits)  # before a load
        with self._admission.admit(spec, self._priority):
            async with self._registry.use(plan.model, self._priority) as engine:
                _check_model(engine.info, plan)
                token_lists = await _token_lists(engine, plan.inputs, limits)
                vectors = await engine.embed(token_lists)
        used = sum(map(len, token_lists))
        record.prompt_tokens = used
        return Embedded(vectors, used)


async def within_request_timeout(work: Awaitable[T], timeout_s: float | None, record: RequestRecord) -> T:
    """`work` within what is left of the request's timeout (a 504 past it); cancelled then, as when the client
    leaves, and the engine's worker stops too."""
    delay = None if timeout_s is None else timeout_s - (time.monotonic() - record.started)
    try:
        async with asyncio.timeout(delay):
            return await work
    except TimeoutError:
        raise RequestTimeoutError(timeout_s or 0) from None


def _check_model(info: EngineInfo, plan: EmbeddingPlan) -> None:
    require_kind(plan.model, info_kind(info), "embedding")
    assert info.embedding_dims is not None  # an embedding model's
    if plan.dimensions is not None and plan.dimensions > info.embedding_dims:
        raise InvalidRequestError(
            f"Invalid value for 'dimensions': the model's vectors have {info.embedding_dims} (got {plan.dimensions}).",
            param="dimensions",
        )


async def _token_lists(engine: Engine, items: Sequence[str | Sequence[int]], limits: RequestLimits) -> list[list[int]]:
    """Each input's tokens, checked against the model (context, vocabulary) and the request's token cap."""
    info = engine.info
    token_lists: list[list[int]] = []
    total = 0
    for item in items:
        tokens = await engine.tokenize(item) if isinstance(item, str) else list(item)
        if not item or not tokens:
            raise InvalidRequestError("An input is empty.", param="input")
        if len(tokens) > info.n_ctx:
            raise ContextLengthExceededError(
                f"This model's maximum input length is {info.n_ctx} tokens; an input has {len(tokens)}.",
                param="input",
            )
        if max(tokens) >= info.n_vocab:
            raise InvalidRequestError("An input holds a token id the model does not have.", param="input")
        total += len(tokens)
        _check_total(total, limits)
        token_lists.append(tokens)
    return token_lists


def _check_total(tokens: int, limits: RequestLimits) -> None:
    if tokens > limits.max_embedding_tokens:
        raise InvalidRequestError(
            f"The inputs hold more than {limits.max_embedding_tokens} tokens; this server embeds at most "
            f"{limits.max_embedding_tokens} tokens per request.",
            param="input",
        )


class EmbeddingAdmission:
    """Embedding requests in progress per model. Beyond the model's `parallel + max_queue` (the bound its
    generation requests have), more are refused with a 429 rather than queued without end. Batch requests take
    only what interactive ones leave, as in generation: a free slot of `parallel`, and beside interactive
    requests at most BATCH_SEQUENCES_BESIDE_INTERACTIVE; otherwise NoRoomForBatch, woken when one ends."""

    def __init__(self) -> None:
        self._running: dict[str, int] = {}
        self._batch: dict[str, int] = {}
        self._released = RoomSignal()

    @contextlib.contextmanager
    def admit(self, spec: ModelSpec, priority: Priority = "interactive") -> Iterator[None]:
        name, batch = spec.name, priority == "batch"
        running, batch_running = self._running.get(name, 0), self._batch.get(name, 0)
        admission = Admission.of(spec)  # the same rules as generation requests
        if batch:
            if admission.batch_room(running, batch_running, interactive=running > batch_running) < 1:
                raise NoRoomForBatch(self._released.wait)
        else:
            admission.check(running - batch_running)
        self._running[name] = running + 1
        self._batch[name] = batch_running + batch
        try:
            yield
        finally:
            self._running[name] -= 1
            self._batch[name] -= batch
            if not self._running[name]:
                del self._running[name], self._batch[name]
            self._released.notify()
