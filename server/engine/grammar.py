"""Output grammars in llama.cpp: compiled once per grammar text, off the scheduler thread, and sampled cheaply.

A grammar is parsed by llama.cpp when a request asks for it, before the request is admitted (a grammar llama.cpp
rejects is a 400, never an error event), and kept as a prototype that each request clones. Sampling checks the
token the unconstrained chain picks against the grammar first and applies the grammar to the whole vocabulary
only when that token is refused, as llama.cpp's own server does: most steps cost one token's check, not one per
vocabulary entry.
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import logging
import math
import threading

import llama_cpp
import numpy as np

from server.errors import InvalidRequestError

logger = logging.getLogger(__name__)

CACHE_SIZE = 32
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class GrammarCache:
    """Compiled grammars by the hash of their text, least recently used dropped first. Thread-safe."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p, size: int = CACHE_SIZE) -> None:
        self._vocab = vocab
        self._size = size
        self._lock = threading.Lock()
        self._compiled: collections.OrderedDict[bytes, llama_cpp.llama_sampler_p] = collections.OrderedDict()

    def compile(self, grammar: str) -> None:
        """Parse the grammar into the cache (blocking: call it off the event loop and the scheduler thread)."""
        key = hashlib.sha256(grammar.encode()).digest()
        with self._lock:
            if key in self._compiled:
                self._compiled.move_to_end(key)
                return
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not sampler:
            logger.warning("llama.cpp refused an output grammar of %d characters", len(grammar))
            raise InvalidRequestError(
                "The output schema could not be turned into a grammar llama.cpp accepts; simplify it.",
                param="response_format",
            )
        with self._lock:
            if key in self._compiled:
                llama_cpp.llama_sampler_free(sampler)
                return
            self._compiled[key] = sampler
            while len(self._compiled) > self._size:
                _, old = self._compiled.popitem(last=False)
                llama_cpp.llama_sampler_free(old)

    def instance(self, grammar: str) -> llama_cpp.llama_sampler_p:
        """A fresh grammar sampler for one request (the caller frees it), compiling the grammar if needed."""
        key = hashlib.sha256(grammar.encode()).digest()
        while True:
            with self._lock:
                prototype = self._compiled.get(key)
                if prototype is not None:
                    self._compiled.move_to_end(key)
                    return llama_cpp.llama_sampler_clone(prototype)
            self.compile(grammar)

    def close(self) -> None:
        with self._lock:
            for sampler in self._compiled.values():
                llama_cpp.llama_sampler_free(sampler)
            self._compiled.clear()


class ConstrainedSampler:
    """Samples one token under a grammar with the request's sampler chain (scheduler thread only)."""

    def __init__(self, n_vocab: int) -> None:
        self._candidates = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._one = np.zeros(1, dtype=_TOKEN_DATA)

    def sample(
        self,
        ctx: llama_cpp.llama_context_p,
        batch_index: int,
        chain: llama_cpp.llama_sampler_p,
        grammar: llama_cpp.llama_sampler_p,
    ) -> int | None:
        """The next token, accepted by both the chain and the grammar; None when the grammar allows no token."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, batch_index), shape=(len(self._candidates),))
        token = self._apply(chain, logits)
        if not self._allows(grammar, token):
            token = self._apply(grammar, logits, then=chain)
            # The chain can still pick a token the grammar refused (say the grammar allows only the end, and
            # `ignore_eos` bans it, so every logit is -inf): accepting it would abort llama.cpp. Stop instead.
            if not self._allows(grammar, token):
                return None
        llama_cpp.llama_sampler_accept(chain, token)
        llama_cpp.llama_sampler_accept(grammar, token)
        return token

    def _apply(
        self, first: llama_cpp.llama_sampler_p, logits: np.ndarray, then: llama_cpp.llama_sampler_p | None = None
    ) -> int | None:
        candidates = self._candidates  # samplers sort and cut it in place: refill it every time
        candidates["id"] = self._ids
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = _array(candidates)
        llama_cpp.llama_sampler_apply(first, ctypes.byref(array))
        if then is not None:
            allowed = candidates["logit"][: array.size]
            if not np.isfinite(allowed).any():
                return None
            llama_cpp.llama_sampler_apply(then, ctypes.byref(array))
        if not 0 <= array.selected < array.size:
            return None
        return int(array.data[array.selected].id)

    def _allows(self, grammar: llama_cpp.llama_sampler_p, token: int | None) -> bool:
        if token is None:
            return False
        one = self._one
        one["id"], one["logit"], one["p"] = token, 0.0, 0.0
        array = _array(one)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
        return math.isfinite(float(one["logit"][0]))


def _array(candidates: np.ndarray) -> llama_cpp.llama_token_data_array:
    array = llama_cpp.llama_token_data_array()
    array.data = candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
    array.size = len(candidates)
    array.selected = -1
    array.sorted = False
    return array
