"""An embedding model (BERT family, pooled, normalised) served through llama.cpp. Worker processes only."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import llama_cpp

from server.config import ModelSpec
from server.engine.base import EngineCounters, EngineInfo, GenerationDelta, GenerationRequest
from server.engine.kinds import Kind, wrong_kind
from server.engine.llama import load_weights
from server.engine.native import NativeModel
from server.errors import InvalidRequestError, ModelUnavailableError

logger = logging.getLogger(__name__)


class EmbeddingEngine:
    """A pooled model: token sequences in, one vector each out. Rerankers (server/engine/rerank.py) are the same
    engine with rank pooling, whose vector is the classification head's output."""

    kind: Kind = "embedding"  # what the model is, in errors for the endpoints it refuses

    def __init__(self, spec: ModelSpec, native: NativeModel, dims: int) -> None:
        self._spec = spec
        self._native = native
        self._info = self._engine_info(spec, native, dims)
        self._lock = threading.Lock()
        self._encode = (
            llama_cpp.llama_encode if llama_cpp.llama_model_has_encoder(native.model) else llama_cpp.llama_decode
        )
        self._batch = llama_cpp.llama_batch_init(spec.n_ctx, 0, 1)
        self._counters = EngineCounters()
        self._batch_started: float | None = None  # monotonic start of the running batch (watchdog)

    @classmethod
    def load(cls, spec: ModelSpec) -> EmbeddingEngine:
        native = open_pooled(spec, llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED, "not a pooled embedding model")
        return cls(spec, native, llama_cpp.llama_model_n_embd(native.model))

    @staticmethod
    def _engine_info(spec: ModelSpec, native: NativeModel, dims: int) -> EngineInfo:
        return EngineInfo(n_ctx=spec.n_ctx, n_vocab=native.n_vocab, embedding_dims=dims)

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def alive(self) -> bool:
        return True

    async def counters(self) -> EngineCounters:
        return self._counters

    @property
    def in_flight(self) -> int:
        return 0

    @property
    def pid(self) -> int | None:
        return None  # runs inside the worker process, whose parent measures it

    def stalled_s(self) -> float:
        """How long the running batch has taken so far (0 while idle): the worker's pings report it."""
        started = self._batch_started
        return 0.0 if started is None else time.monotonic() - started

    async def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        template_vars: Mapping[str, Any] | None = None,
    ) -> str:
        raise self._wrong_endpoint("generative")

    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self._native.tokenize(text, add_special=add_special, parse_special=parse_special)

    async def detokenize(self, tokens: Sequence[int]) -> list[bytes]:
        return [self._native.piece(token, special=True) for token in tokens]

    async def compile_grammar(self, grammar: str) -> None:
        raise self._wrong_endpoint("generative")

    async def tokenize_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        template_vars: Mapping[str, Any] | None = None,
    ) -> list[int]:
        raise self._wrong_endpoint("generative")

    def check_batch_room(self, sequences: int = 1) -> None:
        """Batch requests are placed by the scheduler itself, behind interactive ones."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        raise self._wrong_endpoint("generative")

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        return await self._pooled(inputs)

    async def rerank_tokens(self, query: str, documents: Sequence[str], max_tokens: int) -> list[list[int]]:
        raise self._wrong_endpoint("reranker")

    async def rerank(self, inputs: Sequence[Sequence[int]]) -> list[float]:
        raise self._wrong_endpoint("reranker")

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        self._native.free()

    async def _pooled(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        cancelled = threading.Event()
        try:
            return await asyncio.to_thread(self._embed_all, inputs, cancelled)
        except asyncio.CancelledError:  # the request is gone: the thread stops before its next batch
            cancelled.set()
            raise

    def _wrong_endpoint(self, wanted: Kind) -> InvalidRequestError:
        return wrong_kind(self._spec.name, self.kind, wanted)

    def _embed_all(self, inputs: Sequence[Sequence[int]], cancelled: threading.Event) -> list[list[float]]:
        vectors: list[list[float]] = []
        with self._lock:
            for group in batches(inputs, self._spec.parallel, self._spec.n_ctx):
                if cancelled.is_set():
                    logger.info("embedding request cancelled after %d of %d inputs", len(vectors), len(inputs))
                    return []
                self._batch_started = time.monotonic()
                try:
                    vectors += self._embed_batch(group)
                finally:
                    self._batch_started = None
        return vectors

    def _embed_batch(self, group: list[Sequence[int]]) -> list[list[float]]:
        batch, n = self._batch, 0
        for seq, tokens in enumerate(group):
            for pos, token in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.logits[n] = token, pos, 1, True
                batch.seq_id[n][0] = seq
                n += 1
        batch.n_tokens = n
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._native.ctx), True)
        if self._encode(self._native.ctx, batch) != 0:
            raise RuntimeError("llama.cpp failed to encode the inputs")
        vectors = [self._output(llama_cpp.llama_get_embeddings_seq(self._native.ctx, seq)) for seq in range(len(group))]
        self._counters.prompt_tokens_evaluated += n
        return vectors

    def _output(self, pointer: Any) -> list[float]:
        """A sequence's result from llama.cpp's pooled output: here the vector, L2-normalised."""
        vector = [pointer[i] for i in range(self._info.embedding_dims or 0)]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]


def open_pooled(spec: ModelSpec, pooling_type: int, refusal: str) -> NativeModel:
    """The model with a context that pools each sequence (`pooling_type`, or the file's own when unspecified).
    `refusal` says what the model is not when llama.cpp pools nothing with it ("not a pooled embedding model")."""
    model, path, _ = load_weights(spec)
    ctx_params = llama_cpp.llama_context_default_params()
    ctx_params.embeddings = True
    ctx_params.pooling_type = pooling_type
    ctx_params.n_ctx = ctx_params.n_batch = ctx_params.n_ubatch = spec.n_ctx  # a whole input in one micro-batch
    ctx_params.n_seq_max = spec.parallel
    ctx_params.n_threads = ctx_params.n_threads_batch = spec.n_threads or 1
    ctx = llama_cpp.llama_init_from_model(model, ctx_params)
    if not ctx or llama_cpp.llama_pooling_type(ctx) == llama_cpp.LLAMA_POOLING_TYPE_NONE:
        if ctx:
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
        raise ModelUnavailableError(f"The model `{spec.name}` is {refusal}.")
    logger.info("loaded pooled model %s from %s (pooling %d)", spec.name, path, llama_cpp.llama_pooling_type(ctx))
    return NativeModel(model=model, ctx=ctx, vocab=llama_cpp.llama_model_get_vocab(model))


def batches(inputs: Sequence[Sequence[int]], n_seq: int, n_tokens: int) -> Iterator[list[Sequence[int]]]:
    """Inputs in order, as many per batch as fit in `n_seq` sequences and `n_tokens` tokens."""
    group: list[Sequence[int]] = []
    size = 0
    for tokens in inputs:
        if group and (len(group) == n_seq or size + len(tokens) > n_tokens):
            yield group
            group, size = [], 0
        group.append(tokens)
        size += len(tokens)
    if group:
        yield group
