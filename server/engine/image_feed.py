"""Image embeddings into a sequence's KV: a llama_batch that carries embeddings instead of tokens, and an encoded
image chunk fed into a sequence a piece at a time, so a scheduler interleaves it with its token steps."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp
import numpy as np


class EmbeddingBatch:
    """A llama_batch that carries embeddings, for decoding image rows into one sequence at a time."""

    def __init__(self, ctx: llama_cpp.llama_context_p, n_embd: int, n_batch: int) -> None:
        self._ctx = ctx
        self.n_embd = n_embd
        self.n_batch = n_batch
        self._batch = llama_cpp.llama_batch_init(n_batch, n_embd, 1)

    def decode(
        self, rows: np.ndarray, *, seq_id: int, pos: int, logits_last: bool = False, causal: bool = True
    ) -> None:
        """Decode up to n_batch rows into sequence `seq_id` at positions pos, pos + 1, ...: one llama_decode.
        With `logits_last`, the last row's logits are at batch index len(rows) - 1 afterwards (an image that
        ends the prompt). `causal` False (a projector whose image attends both ways) turns the context's causal
        mask off for this decode: then the whole image must go in one call."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        n = rows.shape[0]
        if rows.ndim != 2 or rows.shape[1] != self.n_embd or not 0 < n <= self.n_batch:
            raise ValueError(f"need 1 to {self.n_batch} rows of {self.n_embd} floats, got {rows.shape}")
        batch = self._batch
        ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
        for i in range(n):
            batch.pos[i] = pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = logits_last and i == n - 1
        batch.n_tokens = n
        if not causal:
            llama_cpp.llama_set_causal_attn(self._ctx, False)
        try:
            rc = llama_cpp.llama_decode(self._ctx, batch)
        finally:
            if not causal:
                llama_cpp.llama_set_causal_attn(self._ctx, True)
        if rc != 0:
            raise RuntimeError(f"llama_decode of image embeddings returned {rc}")

    def free(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None


@dataclass(eq=False)
class ImageFeed:
    """An encoded image chunk on its way into a sequence's KV: `pos` is the position of row 0 (`done` rows are
    in already, e.g. from a cached prefix that ends inside the image)."""

    rows: np.ndarray
    seq_id: int
    pos: int
    done: int = 0
    causal: bool = True  # Projector.causal: False means the whole image goes in one decode

    @property
    def remaining(self) -> int:
        return self.rows.shape[0] - self.done

    def step(self, batch: EmbeddingBatch, max_rows: int, *, logits_last: bool = False) -> int:
        """Decode the next rows (at most `max_rows` and the batch's size); how many. `logits_last`: ask for the
        logits of the image's last row, when this step reaches it."""
        take = min(self.remaining, max_rows, batch.n_batch)
        if not self.causal and take < self.remaining:
            raise ValueError("an image decoded without the causal mask goes in one piece: raise n_batch")
        if take <= 0:
            return 0
        end = self.done + take
        batch.decode(
            self.rows[self.done : end],
            seq_id=self.seq_id,
            pos=self.pos + self.done,
            logits_last=logits_last and end == self.rows.shape[0],
            causal=self.causal,
        )
        self.done = end
        return take
