"""The prompt cache that survives restarts: the KV of long cached prompt prefixes (a shared system prompt), saved
with llama.cpp's sequence state when a generative model unloads (idle, evicted, shutdown) and restored into its
sequences when it loads again, so the first request after a restart reuses the prefix instead of prefilling it.

Files, key and size cap: server/engine/prompt_store.py. The key covers what decides a prefix's KV values and
layout: the model file (path, size, modification time), n_ctx, parallel (llama.cpp's state holds one KV stream
per sequence), n_batch (how a prompt is split into decode steps), the cache types, flash attention (the V
layout), the weight buffers (extra_bufts: other kernels) and the llama.cpp build. Anything wrong with a file only
logs and removes it: a load never fails because of the prompt cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import llama_cpp

from server.config import ModelSpec
from server.engine.kv_cache import spec_kv_cache_bytes
from server.engine.prompt_store import (
    BadEntry,
    PromptCacheConfig,
    SavedPrefix,
    cache_key,
    delete_expired,
    enforce_cap,
    entry_name,
    file_identity,
    prefixes_to_save,
    read_entry,
    remove,
    saved_entries,
    touch,
    write_entry,
)
from server.engine.restore_guard import RestoreUnguarded, restoring, unfinished_restores

logger = logging.getLogger(__name__)

# ProcessEngine.close waits 10 s for the worker to exit before killing it: saving stops starting new files after
# this long (one file of a few hundred MiB takes well under a second to write locally).
SAVE_DEADLINE_S = 5.0
STATE_SLACK_BYTES, STATE_SLACK_PER_CELL = 1 << 20, 64  # llama.cpp's bookkeeping around a sequence's KV


class CachedSequence(NamedTuple):
    """A KV sequence and the tokens whose KV it holds."""

    seq_id: int
    tokens: list[int]


class PromptCache:
    def __init__(
        self, config: PromptCacheConfig, key: str, *, model: str, n_ctx: int, n_seq: int, max_state: int
    ) -> None:
        self._config = config
        self.key = key
        self._model = model
        self._n_ctx = n_ctx
        self._n_seq = n_seq
        self._max_state = max_state  # bytes one sequence's state can take: a file claiming more is not read
        self._restored: list[list[int]] = []  # the prefixes restored at load, which are on disk already

    @classmethod
    def of(
        cls, config: PromptCacheConfig | None, spec: ModelSpec, path: Path, *, extra_bufts: bool
    ) -> PromptCache | None:
        """The model's prompt cache, or None where it is off (no directory given, a cap of 0, or the model's
        `prompt_cache: false`)."""
        if config is None or not config.enabled or not spec.prompt_cache:
            return None
        identity = {
            **file_identity(path),
            "n_ctx": spec.n_ctx,
            "parallel": spec.parallel,
            "n_batch": spec.n_batch,
            "cache_type_k": spec.cache_type_k,
            "cache_type_v": spec.cache_type_v,
            "flash_attn": spec.flash_attn,
            "extra_bufts": extra_bufts,
            "kv_unified": False,
            "llama_cpp": llama_cpp.__version__,
        }
        try:  # one sequence's KV, and room for llama.cpp's per-cell and per-layer bookkeeping
            one = spec_kv_cache_bytes(spec.model_copy(update={"parallel": 1}), path)
            max_state = one + STATE_SLACK_BYTES + STATE_SLACK_PER_CELL * spec.n_ctx
        except ValueError:
            max_state = config.max_bytes
        return cls(
            config, cache_key(identity), model=spec.name, n_ctx=spec.n_ctx, n_seq=spec.parallel, max_state=max_state
        )

    def restore(self, ctx: llama_cpp.llama_context_p) -> list[CachedSequence]:
        """Load this key's most recently used saved prefixes into sequences 0, 1, ... (one each, at most one per
        sequence), most recent first. A file that is not valid is removed; nothing here raises."""
        memory = llama_cpp.llama_get_memory(ctx)
        directory = self._config.directory
        for name in unfinished_restores(directory, self.key):
            remove(directory / name, "the last worker that restored it ended before llama.cpp returned")
        delete_expired(directory, self._config.max_age_s)
        restored: list[CachedSequence] = []
        for path in saved_entries(directory, self.key):
            if len(restored) == self._n_seq:
                break
            seq_id = len(restored)
            started = time.monotonic()
            try:
                with restoring(directory, self.key, path.name):
                    saved = read_entry(path, self.key, self._n_ctx, self._max_state)
                    accepted = _set_sequence(ctx, memory, seq_id, saved)
            except BadEntry as exc:
                remove(path, str(exc))
                continue
            except RestoreUnguarded as exc:
                logger.warning("prompt cache: cannot mark a restore in %s (%s): nothing restored", directory, exc)
                break
            except OSError as exc:  # removed by another worker's eviction meanwhile, or unreadable
                logger.warning("prompt cache: cannot restore %s: %s", path.name, exc)
                continue
            if not accepted:
                remove(path, "llama.cpp refused its state")
                continue
            touch(path)
            restored.append(CachedSequence(seq_id, saved.tokens))
            self._restored.append(saved.tokens)
            logger.info(
                "prompt cache: restored %d tokens (%d bytes) of model %s into sequence %d in %.3f s",
                len(saved.tokens),
                len(saved.state),
                self._model,
                seq_id,
                time.monotonic() - started,
            )
        return restored

    def save(self, ctx: llama_cpp.llama_context_p, sequences: Sequence[CachedSequence]) -> list[Path]:
        """Save the longest cached prefixes of `sequences` (most recently used first), then keep the directory under
        its cap. Cuts those sequences' KV down to the saved prefix: call it only when the context is about to be
        freed. Returns the files written or refreshed."""
        memory = llama_cpp.llama_get_memory(ctx)
        started = time.monotonic()
        saved: list[Path] = []
        chosen = prefixes_to_save([s.tokens for s in sequences], self._config.min_tokens, self._restored)
        for index, length in chosen:
            if time.monotonic() - started > SAVE_DEADLINE_S:
                logger.warning("prompt cache: saving stopped after %.0f s (the worker is exiting)", SAVE_DEADLINE_S)
                break
            sequence = sequences[index]
            tokens = sequence.tokens[:length]
            if length < len(sequence.tokens) and not llama_cpp.llama_memory_seq_rm(memory, sequence.seq_id, length, -1):
                tokens = sequence.tokens  # this kind of memory cannot drop a tail: the whole sequence, then
            try:
                path = self._save_one(ctx, sequence.seq_id, tokens)
            except OSError as exc:
                logger.warning("prompt cache: could not save %d tokens of model %s: %s", len(tokens), self._model, exc)
                continue
            if path is not None:
                saved.append(path)
        if saved:
            # Written (or touched) most recent first: their times are set in that order, so the cap keeps the most
            # recently used and the next load restores them first.
            now = time.time_ns()
            for rank, path in enumerate(saved):
                with contextlib.suppress(OSError):
                    os.utime(path, ns=(now - rank * 1_000_000, now - rank * 1_000_000))
            enforce_cap(self._config.directory, self._config.max_bytes, self._config.max_age_s)
        return saved

    def _save_one(self, ctx: llama_cpp.llama_context_p, seq_id: int, tokens: list[int]) -> Path | None:
        started = time.monotonic()
        existing = self._config.directory / entry_name(self.key, tokens)
        if existing.is_file():  # the same prefix, saved before (and restored this time): only marked used
            touch(existing)
            return existing
        size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
        if size > self._config.max_bytes:
            logger.info(
                "prompt cache: %d tokens of model %s take %d bytes, more than the cap of %d: not saved",
                len(tokens),
                self._model,
                size,
                self._config.max_bytes,
            )
            return None
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, seq_id)
        if written != size:
            logger.warning("prompt cache: llama.cpp gave %d of %d bytes of a sequence state: not saved", written, size)
            return None
        path = write_entry(self._config.directory, self.key, tokens, memoryview(buffer))
        logger.info(
            "prompt cache: saved %d tokens (%d bytes) of model %s to %s in %.3f s",
            len(tokens),
            size,
            self._model,
            path.name,
            time.monotonic() - started,
        )
        return path


def _set_sequence(
    ctx: llama_cpp.llama_context_p, memory: llama_cpp.llama_memory_t, seq_id: int, saved: SavedPrefix
) -> bool:
    """Put a saved state into an empty sequence; False (and the sequence emptied) where llama.cpp refuses it or it
    does not hold exactly the saved tokens' positions."""
    size = len(saved.state)
    buffer = (ctypes.c_uint8 * size).from_buffer(saved.state)
    read = llama_cpp.llama_state_seq_set_data(ctx, buffer, size, seq_id)
    if read == size and llama_cpp.llama_memory_seq_pos_max(memory, seq_id) == len(saved.tokens) - 1:
        return True
    llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
    return False
