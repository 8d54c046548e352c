"""Sampling under an output grammar, cheaply (grammars are compiled in server/engine/grammar_cache.py).

Sampling checks the token the unconstrained chain picks against the grammar first, as llama.cpp's own server does:
most steps cost one token's check. Only when that token is refused is the grammar applied to more: first to the
TOP_CANDIDATES most likely tokens, then, if it allows none of them, to the whole vocabulary. A grammar costs a pass
per parse stack over the tokens it is applied to, so an ambiguous one is far cheaper on two thousand tokens than on
a vocabulary of 150,000. Greedy sampling still picks the most likely allowed token (nothing outside the candidates
can beat one inside); sampling at a temperature then draws among the allowed candidates, as a top-k of that size
would. With repetition penalties (which may raise a token from outside the candidates) the whole vocabulary is used.
"""

from __future__ import annotations

import ctypes
import math
import time

import llama_cpp
import numpy as np

from server.engine.base import SamplingParams
from server.engine.grammar_guard import StepGuard

TOP_CANDIDATES = 2_000
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


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
        sampling: SamplingParams | None = None,
        guard: StepGuard | None = None,
    ) -> int | None:
        """The next token, accepted by both the chain and the grammar; None when the grammar allows no token.
        `sampling` (the chain's settings) lets a refused pick be replaced from the top candidates first; `guard`
        raises GrammarStepTooSlow when the token's grammar work takes, or would take, too long."""
        if guard is not None:
            guard.start()
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, batch_index), shape=(len(self._candidates),))
        token = self._apply(chain, logits)
        checked = time.thread_time()
        if not self._allows(grammar, token):
            token = self._from_top(grammar, chain, logits, sampling)
            if token is None:
                token = self._apply(grammar, logits, then=chain)
            # The chain can still pick a token the grammar refused (say the grammar allows only the end, and
            # `ignore_eos` bans it, so every logit is -inf): accepting it would abort llama.cpp. Stop instead.
            checked = time.thread_time()
            if not self._allows(grammar, token):
                return None
        assert token is not None
        self._accept(chain, grammar, token, guard, time.thread_time() - checked)
        return token

    def force(
        self,
        chain: llama_cpp.llama_sampler_p,
        grammar: llama_cpp.llama_sampler_p | None,
        token: int,
        guard: StepGuard | None = None,
    ) -> bool:
        """Take `token` without sampling (the forced end of a thinking block), when the grammar, if any, allows
        it: accepting a token the grammar refuses would abort llama.cpp."""
        if grammar is None:
            llama_cpp.llama_sampler_accept(chain, token)
            return True
        if guard is not None:
            guard.start()
        checked = time.thread_time()
        if not self._allows(grammar, token):
            return False
        self._accept(chain, grammar, token, guard, time.thread_time() - checked)
        return True

    @staticmethod
    def _accept(
        chain: llama_cpp.llama_sampler_p,
        grammar: llama_cpp.llama_sampler_p,
        token: int,
        guard: StepGuard | None,
        check_s: float,
    ) -> None:
        if guard is not None:
            guard.before_accept(check_s)
        accepting = time.thread_time()
        llama_cpp.llama_sampler_accept(chain, token)
        llama_cpp.llama_sampler_accept(grammar, token)
        if guard is not None:
            guard.after_accept(time.thread_time() - accepting)

    def _from_top(
        self,
        grammar: llama_cpp.llama_sampler_p,
        chain: llama_cpp.llama_sampler_p,
        logits: np.ndarray,
        sampling: SamplingParams | None,
    ) -> int | None:
        """The chain's pick among the most likely tokens the grammar allows; None when it allows none of them (or
        when only the whole vocabulary gives the right answer)."""
        if sampling is None or len(logits) <= TOP_CANDIDATES or _penalized(sampling):
            return None
        ranked = logits.astype(np.float64)
        for token, bias in sampling.logit_bias:  # as the chain will see them
            ranked[token] += bias
        threshold = np.partition(ranked, len(ranked) - TOP_CANDIDATES)[len(ranked) - TOP_CANDIDATES]
        ids = np.flatnonzero(ranked >= threshold)  # ties at the threshold too, in id order as the vocabulary
        if not math.isfinite(threshold) or len(ids) > 2 * TOP_CANDIDATES:
            return None
        top = np.zeros(len(ids), dtype=_TOKEN_DATA)
        top["id"] = ids
        top["logit"] = logits[ids]
        array = _array(top)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
        if not np.isfinite(top["logit"][: array.size]).any():
            return None
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
        if not 0 <= array.selected < array.size or not math.isfinite(float(array.data[array.selected].logit)):
            return None  # the chain banned every allowed candidate (an end token under ignore_eos)
        return int(array.data[array.selected].id)

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


def _penalized(sampling: SamplingParams) -> bool:
    return sampling.presence_penalty != 0 or sampling.frequency_penalty != 0 or sampling.repeat_penalty != 1.0


def _array(candidates: np.ndarray) -> llama_cpp.llama_token_data_array:
    array = llama_cpp.llama_token_data_array()
    array.data = candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
    array.size = len(candidates)
    array.selected = -1
    array.sorted = False
    return array
