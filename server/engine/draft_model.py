"""A draft model for speculative decoding: a smaller model with the target's vocabulary guesses the next tokens
greedily, and the target verifies them in its own next decode step (server/engine/step_sampler.py).

It runs in the target's worker, on the scheduler thread, with a context of its own holding one KV stream per
target sequence. Before guessing, each sequence's stream is brought level with the target's tokens (the longest
common prefix kept, the rest evaluated in batches), then every drafting sequence advances one token per decode,
together, until its draft is long enough or the draft model is unsure (its top token below `MIN_CONFIDENCE`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from server.engine.native import NativeModel, sequences_context
from server.engine.prefix import common_prefix
from server.errors import ModelUnavailableError

logger = logging.getLogger(__name__)

MIN_CONFIDENCE = 0.5  # a guess the draft model gives less than this probability ends the draft (llama.cpp: 0.75)
VOCAB_SAMPLE = 257  # every so many token ids, their text must be the same in both vocabularies


@dataclass
class DraftRequest:
    seq_id: int
    tokens: Sequence[int]  # the sequence's tokens so far, its next (not yet evaluated) token last
    most: int  # tokens to guess at most


class DraftModel:
    def __init__(self, native: NativeModel, *, n_batch: int) -> None:
        self._native = native
        self._n_batch = n_batch
        self._memory = llama_cpp.llama_get_memory(native.ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._cached: dict[int, list[int]] = {}  # per sequence: the tokens whose KV the draft context holds

    @classmethod
    def load(
        cls, path: Path, target: NativeModel, *, n_seq: int, n_ctx: int, n_batch: int, threads: int, extra_bufts: bool
    ) -> DraftModel:
        """Load the draft model beside the target (with the target's settings); refused (ModelUnavailableError)
        unless the vocabularies match."""
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = extra_bufts  # off where the CPU has AMX: llama.cpp's AMX path crashes (docs/)
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ModelUnavailableError(f"The draft model {path.name} failed to load in llama.cpp; see the server log.")
        ctx = llama_cpp.llama_init_from_model(model, sequences_context(n_seq, n_ctx, n_batch, threads))
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise ModelUnavailableError(f"The draft model {path.name} could not get a context; see the server log.")
        native = NativeModel(model=model, ctx=ctx, vocab=llama_cpp.llama_model_get_vocab(model))
        problem = vocabulary_mismatch(native, target)
        if problem is not None:
            native.free()
            raise ModelUnavailableError(f"The draft model {path.name} cannot draft for this model: {problem}.")
        return cls(native, n_batch=n_batch)

    def propose(self, requests: Sequence[DraftRequest]) -> dict[int, list[int]]:
        """Each sequence's greedy guesses of the tokens after its last one."""
        drafts: dict[int, list[int]] = {request.seq_id: [] for request in requests}
        pending = {request.seq_id: self._level(request) for request in requests if request.most > 0}
        guesses = self._evaluate(pending)
        active = {r.seq_id: r.most for r in requests if r.most > 0}
        while active:
            step: dict[int, list[int]] = {}
            for seq_id, most in list(active.items()):
                token, confidence = guesses[seq_id]
                if confidence < MIN_CONFIDENCE or token in self._native.eog_tokens:
                    del active[seq_id]
                    continue
                drafts[seq_id].append(token)
                if len(drafts[seq_id]) >= most:
                    del active[seq_id]
                else:
                    step[seq_id] = [token]
            if not step:
                break
            guesses = self._evaluate(step)
        return drafts

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        self._native.free()

    def _level(self, request: DraftRequest) -> list[int]:
        """Keep the draft KV's common prefix with the sequence's tokens; return the tokens still to evaluate."""
        cached = self._cached.setdefault(request.seq_id, [])
        keep = common_prefix(cached, request.tokens)
        if keep == len(request.tokens):  # all evaluated: the last one again, for its logits
            keep -= 1
        if keep < len(cached):
            if not llama_cpp.llama_memory_seq_rm(self._memory, request.seq_id, keep, -1):
                llama_cpp.llama_memory_seq_rm(self._memory, request.seq_id, -1, -1)
                keep = 0
            del cached[keep:]
        return list(request.tokens[keep:])

    def _evaluate(self, pending: Mapping[int, list[int]]) -> dict[int, tuple[int, float]]:
        """Evaluate each sequence's pending tokens (in batches of n_batch); each one's best next token and its
        probability, read right after the decode that holds its last token (the next decode overwrites logits)."""
        queue = {seq_id: list(tokens) for seq_id, tokens in pending.items() if tokens}
        best: dict[int, tuple[int, float]] = {}
        while queue:
            batch, n, last = self._batch, 0, {}
            for seq_id in list(queue):
                take = min(len(queue[seq_id]), self._n_batch - n)
                if take <= 0:
                    break
                chunk, queue[seq_id] = queue[seq_id][:take], queue[seq_id][take:]
                cached = self._cached[seq_id]
                for i, token in enumerate(chunk):
                    final = not queue[seq_id] and i == take - 1
                    batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, len(cached), 1
                    batch.seq_id[n][0], batch.logits[n] = seq_id, final
                    cached.append(token)
                    if final:
                        last[seq_id] = n
                    n += 1
                if not queue[seq_id]:
                    del queue[seq_id]
            batch.n_tokens = n
            if llama_cpp.llama_decode(self._native.ctx, batch) != 0:
                raise RuntimeError("the draft model's llama_decode failed")
            best.update((seq_id, self._best(index)) for seq_id, index in last.items())
        return best

    def _best(self, index: int) -> tuple[int, float]:
        pointer = llama_cpp.llama_get_logits_ith(self._native.ctx, index)
        logits = np.ctypeslib.as_array(pointer, shape=(self._native.n_vocab,))
        token = int(logits.argmax())
        confidence = 1.0 / float(np.exp(logits - logits[token]).sum())
        return token, confidence


def vocabulary_mismatch(draft: NativeModel, target: NativeModel) -> str | None:
    """Why the draft model's tokens would not mean the target's, or None when they match."""
    if draft.n_vocab != target.n_vocab:
        return f"its vocabulary has {draft.n_vocab} tokens, this model's {target.n_vocab}"
    for name in ("bos", "eos"):
        ours = getattr(llama_cpp, f"llama_vocab_{name}")(draft.vocab)
        theirs = getattr(llama_cpp, f"llama_vocab_{name}")(target.vocab)
        if ours != theirs:
            return f"its {name} token is {ours}, this model's {theirs}"
    for token in range(0, target.n_vocab, VOCAB_SAMPLE):
        ours, theirs = draft.piece(token, special=True), target.piece(token, special=True)
        if ours != theirs:
            return f"token {token} is {ours!r} there, {theirs!r} here"
    return None
