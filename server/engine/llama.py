"""The llama.cpp engine: loads a GGUF through llama-cpp-python's C API and serves it with a batching scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import llama_cpp

from server.config import ConfigError, ModelSpec, SpeculativeSpec
from server.engine.base import EngineCounters, EngineInfo, GenerationDelta, GenerationRequest, RGBImage
from server.engine.batching import BatchScheduler
from server.engine.cpu import resolve_use_extra_bufts
from server.engine.delta_outlet import DeltaOutlet, DeltaSink
from server.engine.draft_model import DraftModel
from server.engine.gguf_check import GGUFProblem, check_gguf
from server.engine.grammar_cache import GrammarCache
from server.engine.image_inputs import ImagePrompt, image_tokens
from server.engine.kinds import wrong_kind
from server.engine.native import NativeModel, sequences_context
from server.engine.prompt_cache import CachedSequence, PromptCache
from server.engine.prompt_store import PromptCacheConfig
from server.engine.reasoning import ThinkingLimit, reasoning_format
from server.engine.template import ChatTemplate, MarkedContent
from server.engine.vision import Projector, load_projector
from server.errors import InvalidRequestError, ModelUnavailableError

logger = logging.getLogger(__name__)
native_logger = logging.getLogger("server.engine.llama.native")

# ggml levels: 1 debug, 2 info (a line per tensor while loading), 3 warn, 4 error, 5 continuation.
_NATIVE_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
_NATIVE_LOG_MAX_BYTES = 500
# models.yaml's `cache_type_k` / `cache_type_v` as ggml types.
CACHE_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}


@llama_cpp.llama_log_callback
def native_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # llama.cpp logs a line per tensor while loading: keep it at DEBUG unless it is a warning or error.
    # A line can hold a whole grammar or prompt: cut it before decoding, so none becomes a multi-megabyte line.
    text = text.rstrip()
    line = text[:_NATIVE_LOG_MAX_BYTES].decode("utf-8", "replace")
    if len(text) > _NATIVE_LOG_MAX_BYTES:
        line += f"... ({len(text) - _NATIVE_LOG_MAX_BYTES} more bytes)"
    native_logger.log(_NATIVE_LEVELS.get(level, logging.DEBUG), "%s", line)


class LlamaCppEngine:
    """One loaded model: a llama.cpp model and context, its chat template, and the scheduler thread."""

    def __init__(
        self,
        spec: ModelSpec,
        native: NativeModel,
        template: ChatTemplate,
        prompt_cache: PromptCache | None = None,
        draft_model: DraftModel | None = None,
        projector: Projector | None = None,
    ) -> None:
        self._spec = spec
        self._draft_model = draft_model
        self._projector = projector
        self._prompt_cache = prompt_cache
        self._native = native
        self._template = template
        self._info = EngineInfo(
            n_ctx=spec.n_ctx,
            n_vocab=native.n_vocab,
            tool_dialect=template.tool_dialect,
            reasoning=reasoning_format(spec.reasoning, template.source),
            vision=projector is not None,
        )
        self._scheduler = BatchScheduler(
            native,
            n_seq=spec.parallel,
            n_ctx=spec.n_ctx,
            n_batch=spec.n_batch,
            max_queue=spec.max_queue,
            speculative=_speculation(spec, native),
            draft_model=draft_model,
            projector=projector,
        )
        self._grammars = GrammarCache(native.vocab)
        if prompt_cache is not None:
            try:
                self._scheduler.adopt(prompt_cache.restore(native.ctx))
            except Exception:  # served all the same: a sequence's KV not adopted is dropped by its first request
                logger.exception("prompt cache: restoring the prompt prefixes of model %s failed", spec.name)
        self._scheduler.start()

    @classmethod
    def load(cls, spec: ModelSpec, prompt_cache: PromptCacheConfig | None = None) -> LlamaCppEngine:
        """Load the model (blocking: call it off the event loop); with `prompt_cache`, restore the saved prompt
        prefixes of this model and settings, and save them again at close (server/engine/prompt_cache.py)."""
        model, path, extra_bufts = load_weights(spec)
        threads = spec.n_threads or os.cpu_count() or 1
        ctx_params = sequences_context(spec.parallel, spec.n_ctx, spec.n_batch, threads)
        if not spec.flash_attn:
            ctx_params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx_params.type_k = CACHE_TYPES[spec.cache_type_k]
        ctx_params.type_v = CACHE_TYPES[spec.cache_type_v]
        ctx = llama_cpp.llama_init_from_model(model, ctx_params)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise ModelUnavailableError(f"The model `{spec.name}` could not get a context; see the server log.")
        native = NativeModel(model=model, ctx=ctx, vocab=llama_cpp.llama_model_get_vocab(model))
        template = ChatTemplate(
            spec.chat_template or _decode_or_none(llama_cpp.llama_model_chat_template(model, None)),
            bos_token=native.special_text(llama_cpp.llama_vocab_bos(native.vocab)),
            eos_token=native.special_text(llama_cpp.llama_vocab_eos(native.vocab)),
        )
        try:
            cache = PromptCache.of(prompt_cache, spec, path, extra_bufts=extra_bufts)
        except OSError as exc:  # the model file vanished meanwhile: serve without the prompt cache
            logger.warning("prompt cache: off for model %s: %s", spec.name, exc)
            cache = None
        logger.info(
            "loaded model %s from %s (n_ctx=%d x %d sequences, threads=%d, extra_bufts=%s, kv cache K %s V %s)",
            spec.name,
            path,
            spec.n_ctx,
            spec.parallel,
            threads,
            extra_bufts,
            spec.cache_type_k,
            spec.cache_type_v,
        )
        draft = projector = None
        try:
            draft = _draft_model(spec, native, threads)
            projector = _projector(spec, native, threads)
        except BaseException:
            if draft is not None:
                draft.close()
            native.free()
            raise
        return cls(spec, native, template, cache, draft, projector)

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def alive(self) -> bool:
        return True

    async def counters(self) -> EngineCounters:
        return dataclasses.replace(self._scheduler.counters)

    @property
    def in_flight(self) -> int:
        return self._scheduler.counters.active_sequences + self._scheduler.counters.queue_depth

    @property
    def pid(self) -> int | None:
        return None  # runs inside the worker process, whose parent measures it

    def building_s(self) -> float:
        """How long the running grammar build has taken (0 when none runs): the worker's pings report it too."""
        return self._grammars.building_s()

    def stalled_s(self) -> float:
        """How long the scheduler has been inside its current step (0 while idle): the worker's pings report it."""
        started = self._scheduler.step_started
        return 0.0 if started is None else time.monotonic() - started

    async def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        template_vars: Mapping[str, Any] | None = None,
    ) -> str:
        return self._template.render(messages, add_generation_prompt=True, tools=tools, variables=template_vars)

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        raise wrong_kind(self._spec.name, "generative", "embedding")

    async def rerank_tokens(self, query: str, documents: Sequence[str], max_tokens: int) -> list[list[int]]:
        raise wrong_kind(self._spec.name, "generative", "reranker")

    async def rerank(self, inputs: Sequence[Sequence[int]]) -> list[float]:
        raise wrong_kind(self._spec.name, "generative", "reranker")

    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self._native.tokenize(text, add_special=add_special, parse_special=parse_special)

    async def detokenize(self, tokens: Sequence[int]) -> list[bytes]:
        # an image's rows (negative pseudo ids) show no text; llama.cpp must never see an id out of its vocabulary
        return [self._native.piece(token, special=True) if token >= 0 else b"" for token in tokens]

    def _holds_control_text(self, value: Any) -> bool:
        if isinstance(value, MarkedContent):  # the dialect's own markers are control text by design
            return any(self._holds_control_text(piece) for piece, is_text in value.pieces if is_text)
        if isinstance(value, str):
            tokenize = self._native.tokenize
            return tokenize(value, add_special=False) != tokenize(value, add_special=False, parse_special=False)
        if isinstance(value, dict):
            return any(self._holds_control_text(k) or self._holds_control_text(v) for k, v in value.items())
        if isinstance(value, list | tuple):
            return any(self._holds_control_text(v) for v in value)
        return False

    async def tokenize_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        template_vars: Mapping[str, Any] | None = None,
        images: Sequence[RGBImage] = (),
        image_marker: str = "",
    ) -> list[int]:
        if images and self._projector is None:
            raise InvalidRequestError(f"The model `{self._spec.name}` does not take images.", param="messages")
        if images and not image_marker:
            raise ValueError("images need a marker")
        text, segments = self._template.render_segments(
            messages, add_generation_prompt=True, tools=tools, variables=template_vars
        )
        # Only contents are kept apart as text; the other client strings a template may print (tool definitions,
        # earlier calls' names and arguments) must hold no control-token text at all.
        others = [tools, [{k: v for k, v in m.items() if k != "content"} for m in messages]]
        if segments is None:  # the template rewrites contents: then contents are held to the same rule
            others.append([m.get("content") for m in messages])
        if self._holds_control_text(others):
            raise InvalidRequestError(
                "The request holds the text of one of this model's control tokens where it cannot be kept apart "
                "from the chat template's markup (tool definitions, tool calls, or contents the template rewrites).",
                param="messages",
            )
        if segments is None:
            segments = [(text, False)]
        if images:
            segments = _image_segments(segments, image_marker, len(images))
        # an image's preprocessing (resizing, slicing) takes a while: in a thread, never on the worker's loop
        shown = [await asyncio.to_thread(image_tokens, self._projector, image) for image in images]
        tokens: list[int] = []
        if segments and isinstance(segments[0][0], int):  # an image first: the BOS the first text would have had
            tokens += self._native.tokenize("", add_special=True)
        for i, (piece, is_content) in enumerate(segments):
            if isinstance(piece, int):
                tokens += shown[piece]
            else:
                tokens += self._native.tokenize(piece, add_special=i == 0, parse_special=not is_content)
        return tokens

    async def compile_grammar(self, grammar: str) -> None:
        await self._grammars.compile(grammar)  # on the cache's own build thread

    def check_batch_room(self, sequences: int = 1) -> None:
        """Batch requests are placed by the scheduler itself, behind interactive ones."""

    def send_deltas_through(self, outlet: DeltaOutlet) -> None:
        """Let requests given a `sink` (see `generate`) have their deltas flushed to `outlet` after each step."""
        self._scheduler.outlet = outlet

    def generate(self, request: GenerationRequest, sink: DeltaSink | None = None) -> AsyncIterator[GenerationDelta]:
        """The request's deltas. With a `sink` (feeding the outlet given to `send_deltas_through`), each delta, and
        a failure the scheduler makes, is handed to it on the scheduler's thread as it is made; the stream yields
        only the last delta, or raises Forwarded for a failure the sink had (any other failure, made before the
        request reached the scheduler, is raised as it is): the worker sends a step's deltas without waking its
        event loop."""
        shown = self._single_tokens(request.shown_tokens)
        if request.images and self._projector is None:
            raise InvalidRequestError(f"The model `{self._spec.name}` does not take images.", param="messages")
        if not request.images and any(token < 0 for token in request.prompt_tokens):
            raise InvalidRequestError("The prompt holds image tokens but the request no images.")
        if request.grammar is None and not request.images:
            return self._scheduler.submit(request, thinking=self._thinking_limit(request), shown=shown, sink=sink)
        return self._prepared(request, shown, sink)

    async def _prepared(
        self,
        request: GenerationRequest,
        shown: frozenset[int],
        sink: DeltaSink | None,
    ) -> AsyncIterator[GenerationDelta]:
        """A request that needs work before it is queued, done in threads (never on the scheduler's thread or
        this loop): its output grammar, compiled before admission (compile_grammar), cloned here or compiled
        again if it left the cache meanwhile; its images' chunks, made again from the images (they are not sent
        across) and checked against the prompt's pseudo ids."""
        loop = asyncio.get_running_loop()
        grammar = images = None
        try:
            if request.grammar is not None:
                grammar = await _owned(loop.run_in_executor(None, self._grammars.instance, request.grammar))
            if request.images:
                assert self._projector is not None
                made = loop.run_in_executor(None, ImagePrompt, self._projector, request.images, request.prompt_tokens)
                images = await _owned(made)
                request = dataclasses.replace(request, images=())  # its chunks have their own copies: let go
        except BaseException:
            if grammar is not None:
                llama_cpp.llama_sampler_free(grammar)
            raise
        # the job owns both from here, and frees them even when the scheduler refuses it
        job = self._scheduler.submit(
            request, grammar, thinking=self._thinking_limit(request), shown=shown, images=images, sink=sink
        )
        async with contextlib.aclosing(job):
            async for delta in job:
                yield delta

    def _single_tokens(self, texts: Sequence[str]) -> frozenset[int]:
        """The tokens of those texts that are one token of this model (any other text shows as text anyway)."""
        found = (self._native.tokenize(text, add_special=False) for text in texts)
        return frozenset(tokens[0] for tokens in found if len(tokens) == 1)

    def _thinking_limit(self, request: GenerationRequest) -> ThinkingLimit | None:
        if request.thinking is None:
            return None
        end_tokens = self._native.tokenize(request.thinking.end, add_special=False)
        return ThinkingLimit(request.thinking, end_tokens)

    def close(self) -> None:
        self._scheduler.stop()
        if self._prompt_cache is not None:
            # a prefix holding an image's rows is not saved: its KV is only valid beside this projector
            kept = [cached for cached in self._scheduler.cached_sequences() if min(cached[1], default=0) >= 0]
            sequences = [CachedSequence(*cached) for cached in kept]
            try:
                self._prompt_cache.save(self._native.ctx, sequences)
            except Exception:  # the model unloads all the same
                logger.exception("prompt cache: saving the prompt prefixes of model %s failed", self._spec.name)
        self._grammars.close()
        if self._draft_model is not None:
            self._draft_model.close()
        if self._projector is not None:
            self._projector.free()
        self._native.free()


def load_weights(spec: ModelSpec) -> tuple[llama_cpp.llama_model_p, Path, bool]:
    """The llama.cpp model of a spec, its file, and whether extra buffer types (AMX, repacking) are on."""
    path = checked_path(spec)
    llama_cpp.llama_log_set(native_log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    logger.info("llama.cpp CPU features: %s", llama_cpp.llama_print_system_info().decode().strip())
    model_params = llama_cpp.llama_model_default_params()
    model_params.use_extra_bufts = resolve_use_extra_bufts(spec.use_extra_bufts)
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
    if not model:
        raise ModelUnavailableError(
            f"The model `{spec.name}` failed to load in llama.cpp (its architecture may be unsupported by this "
            "version, or its tensors do not match it); see the server log."
        )
    return model, path, bool(model_params.use_extra_bufts)


def checked_path(spec: ModelSpec) -> Path:
    """Refuse what llama.cpp would choke on before handing it over, with a reason: a missing file, or one that is
    not GGUF, damaged or truncated."""
    try:
        path = spec.model_path()
        architecture = check_gguf(path)
    except (ConfigError, OSError) as exc:
        logger.error("model %s: %s", spec.name, exc)
        raise ModelUnavailableError(f"The model `{spec.name}` is not available; see the server log.") from exc
    except GGUFProblem as exc:
        logger.error("model %s: %s: %s", spec.name, path, exc)
        raise ModelUnavailableError(f"The model `{spec.name}` cannot be loaded: {exc}.") from exc
    logger.info("model %s: %s (architecture %s)", spec.name, path, architecture)
    return path


def _speculation(spec: ModelSpec, native: NativeModel) -> SpeculativeSpec | None:
    """The model's speculative decoding, unless its memory cannot drop a rejected draft's KV (a recurrent or
    hybrid model keeps one state per sequence, not one cell per position)."""
    if spec.speculative is None:
        return None
    if llama_cpp.llama_model_is_recurrent(native.model) or llama_cpp.llama_model_is_hybrid(native.model):
        logger.warning("speculative decoding: off for model %s (a recurrent model cannot drop drafts)", spec.name)
        return None
    return spec.speculative


def _draft_model(spec: ModelSpec, native: NativeModel, threads: int) -> DraftModel | None:
    speculative = spec.speculative
    if speculative is None or speculative.draft_path is None or _speculation(spec, native) is None:
        return None
    draft = DraftModel.load(
        speculative.draft_path,
        native,
        n_seq=spec.parallel,
        n_ctx=spec.n_ctx,
        n_batch=spec.n_batch,
        threads=threads,
        extra_bufts=resolve_use_extra_bufts(spec.use_extra_bufts),
    )
    logger.info("model %s drafts with %s", spec.name, speculative.draft_path.name)
    return draft


def _projector(spec: ModelSpec, native: NativeModel, threads: int) -> Projector | None:
    path = spec.projector_path()
    if path is None:
        return None
    projector = load_projector(path, native.model, model_name=spec.name, n_threads=threads)
    if not projector.causal:  # its image must go into the KV whole, which a cached prefix may cut: not served
        projector.free()
        raise ModelUnavailableError(f"The projector of model `{spec.name}` is of a kind this server does not serve.")
    return projector


def _image_segments(segments: list[tuple[str, bool]], marker: str, n_images: int) -> list[tuple[str | int, bool]]:
    """The segments with each image marker in a content cut out as the index of its image (in order)."""
    out: list[tuple[str | int, bool]] = []
    found = 0
    for piece, is_content in segments:
        texts = piece.split(marker)  # the marker holds a nonce no client text can have
        for i, text in enumerate(texts):
            if i:
                out.append((found, True))
                found += 1
            if text:
                out.append((text, is_content))
    if found != n_images:
        raise InvalidRequestError(
            f"The model's chat template shows {found} of the request's {n_images} images (it may leave some "
            "messages out).",
            param="messages",
        )
    return out


def _decode_or_none(raw: bytes | None) -> str | None:
    return raw.decode("utf-8") if raw else None


async def _owned(made: asyncio.Future[Any]) -> Any:
    """What a thread makes (a grammar sampler, an image prompt); should the caller leave meanwhile, it is freed
    when it comes."""
    try:
        return await asyncio.shield(made)
    except asyncio.CancelledError:
        made.add_done_callback(_free_made)
        raise


def _free_made(made: asyncio.Future[Any]) -> None:
    if made.cancelled() or made.exception() is not None:
        return
    value = made.result()
    if isinstance(value, ImagePrompt):
        value.close()
    else:
        llama_cpp.llama_sampler_free(value)
