"""Thin wrappers over llama-cpp-python's C API: a loaded model's handles, tokenization, sampler chains."""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from server.engine.base import SamplingParams, TokenLogprob

PENALTY_LAST_N = 64


@dataclass
class NativeModel:
    """The raw llama.cpp handles of one loaded model."""

    model: llama_cpp.llama_model_p
    ctx: llama_cpp.llama_context_p
    vocab: llama_cpp.llama_vocab_p
    n_vocab: int = field(init=False)
    eog_tokens: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.eog_tokens = tuple(t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t))

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        """Tokens of `text`; with `parse_special`, control-token text (`<|im_end|>`) becomes the control token."""
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:  # buffer too small: -n is the size needed
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def logprobs(self, batch_index: int, token: int, top_n: int) -> TokenLogprob:
        """Log-softmax of the raw logits at a batch position: the token's value and the `top_n` best."""
        pointer = llama_cpp.llama_get_logits_ith(self.ctx, batch_index)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64)
        peak = logits.max()
        log_norm = peak + math.log(float(np.exp(logits - peak).sum()))
        top: tuple[tuple[bytes, float], ...] = ()
        if top_n:
            best = np.argpartition(-logits, top_n - 1)[:top_n]
            best = best[np.argsort(-logits[best])]
            top = tuple((self.piece(int(t)), float(logits[t] - log_norm)) for t in best)
        return TokenLogprob(self.piece(token), float(logits[token] - log_norm), top)

    def special_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", "replace") if token >= 0 else ""

    def free(self) -> None:
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None


def sequences_context(n_seq: int, n_ctx: int, n_batch: int, threads: int) -> llama_cpp.llama_context_params:
    """Context parameters for `n_seq` sequences of `n_ctx` tokens each, one KV stream per sequence.

    Not unified: each sequence's cells stay in position order, and llama.cpp's flash attention then gives a
    sequence the same logits whatever else is in the batch, so greedy and seeded output do not depend on load.
    (With a unified cache, cells freed by other sequences are reused out of order, and the attention sums change
    in the last bits: measured, seeded samples diverged.)"""
    params = llama_cpp.llama_context_default_params()
    params.n_seq_max = n_seq
    params.n_ctx = n_ctx * n_seq
    params.kv_unified = False
    params.n_batch = params.n_ubatch = n_batch
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    return params


def make_sampler(params: SamplingParams, native: NativeModel) -> llama_cpp.llama_sampler_p:
    """A llama.cpp sampler chain for one request: biases, penalties, then greedy or top-k/p, min-p, temperature.
    An output grammar is applied beside it (server/engine/grammar.py)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    add = llama_cpp.llama_sampler_chain_add
    biases = list(params.logit_bias)
    if params.ignore_eos:
        biases += [(token, -math.inf) for token in native.eog_tokens]
    if biases:
        array = (llama_cpp.llama_logit_bias * len(biases))(*(llama_cpp.llama_logit_bias(t, b) for t, b in biases))
        add(chain, llama_cpp.llama_sampler_init_logit_bias(native.n_vocab, len(biases), array))
    if params.presence_penalty or params.frequency_penalty or params.repeat_penalty != 1.0:
        add(
            chain,
            llama_cpp.llama_sampler_init_penalties(
                native.n_vocab, PENALTY_LAST_N, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
            ),
        )
    if params.temperature <= 0.0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
    add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
    seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
    add(chain, llama_cpp.llama_sampler_init_dist(seed))
    return chain
