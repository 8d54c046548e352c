"""A request's images on the scheduler's side: their chunks found by the pseudo token ids that stand for their rows
(`ImagePrompt`), encoded by the projector on a thread of its own (`ImageEncoder`), and fed into their sequences'
KV between token steps (`ImageStep`), so that other sequences keep decoding while an image is encoded.

An image's pseudo ids depend on its pixels and its projector only (server/engine/vision.py), so the tokens of a
prompt made in one call (`image_tokens`) match the chunks made again for its generation from the same images.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from server.engine.base import EngineCounters, RGBImage
from server.engine.image_feed import EmbeddingBatch
from server.engine.vision import ImageChunk, Projector, VisionPrompt
from server.errors import InvalidRequestError

logger = logging.getLogger(__name__)

ENCODED_CACHE_BYTES = 64 * 1024 * 1024
"""Encoded image chunks kept for the next request that sends the same image (its KV may be gone meanwhile)."""


def image_tokens(projector: Projector, image: RGBImage) -> list[int]:
    """The tokens an image takes in a prompt: the projector's framing text tokens and a pseudo id per row."""
    prompt = projector.tokenize([image])
    try:
        return prompt.cache_tokens()
    finally:
        prompt.close()


class ImagePrompt:
    """The image chunks of one request, found by the pseudo id of any of their rows."""

    def __init__(self, projector: Projector, images: Sequence[RGBImage], prompt_tokens: Sequence[int]) -> None:
        self._prompts: list[VisionPrompt] = []
        self._rows: dict[int, tuple[ImageChunk, int]] = {}
        self.ids: dict[int, tuple[int, ...]] = {}  # id(chunk): its rows' pseudo ids
        try:
            for image in images:
                prompt = projector.tokenize([image])
                self._prompts.append(prompt)
                for chunk in prompt.chunks:
                    if isinstance(chunk, ImageChunk):
                        ids = chunk.cache_tokens()
                        self.ids[id(chunk)] = ids
                        self._rows.update((token, (chunk, row)) for row, token in enumerate(ids))
            if any(token < 0 and token not in self._rows for token in prompt_tokens):
                raise InvalidRequestError("The prompt's image tokens do not match the request's images.")
            if prompt_tokens and prompt_tokens[-1] < 0:
                raise InvalidRequestError("A prompt may not end with an image: text must follow it.")
        except BaseException:
            self.close()
            raise

    def locate(self, token: int) -> tuple[ImageChunk, int]:
        """The chunk a pseudo id belongs to, and its row."""
        return self._rows[token]

    def close(self) -> None:
        for prompt in self._prompts:
            prompt.close()
        self._prompts = []


class ImageEncoder:
    """Encodes image chunks one at a time on its own thread, keeping recent results (by chunk key) within a byte
    bound. `rows` is asked on the scheduler thread; a finished encode notifies the scheduler's condition."""

    def __init__(self, projector: Projector, wake: threading.Condition, counters: EngineCounters) -> None:
        self._projector = projector
        self._wake = wake
        self._counters = counters
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="image-encoder")
        self._done: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._done_bytes = 0
        self._running: dict[str, Future[np.ndarray | None]] = {}
        self.completed = 0  # encodes finished, read and written under `wake`

    def rows(self, chunk: ImageChunk, cancelled: Callable[[], bool]) -> np.ndarray | None:
        """The chunk's embeddings when they are ready; else None, and its encode is under way. Raises what the
        encode raised."""
        found = self._done.get(chunk.key)
        if found is not None:
            self._done.move_to_end(chunk.key)
            return found
        running = self._running.get(chunk.key)
        if running is None:
            future = self._pool.submit(self._encode, chunk, cancelled)
            future.add_done_callback(self._finished)
            self._running[chunk.key] = future
            return None
        if not running.done():
            return None
        del self._running[chunk.key]
        rows = running.result()  # raises the encode's error
        if rows is None:  # skipped: its request was cancelled before its turn came
            return self.rows(chunk, cancelled)
        self._keep(chunk.key, rows)
        return rows

    def release(self, prompt: ImagePrompt) -> None:
        """Free a request's chunks after any encode of them already queued (on the encoder's own thread)."""
        try:
            self._pool.submit(prompt.close)
        except RuntimeError:  # shut down: nothing encodes any more
            prompt.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    def _encode(self, chunk: ImageChunk, cancelled: Callable[[], bool]) -> np.ndarray | None:
        if cancelled():
            return None
        rows = self._projector.encode(chunk)
        self._counters.image_chunks_encoded += 1
        return rows

    def _finished(self, _future: Future[np.ndarray | None]) -> None:
        with self._wake:
            self.completed += 1
            self._wake.notify_all()

    def _keep(self, key: str, rows: np.ndarray) -> None:
        if rows.nbytes > ENCODED_CACHE_BYTES:
            return
        self._done[key] = rows
        self._done_bytes += rows.nbytes
        while self._done_bytes > ENCODED_CACHE_BYTES:
            _, dropped = self._done.popitem(last=False)
            self._done_bytes -= dropped.nbytes


class ImageStep:
    """Each step, before the token batch: the next rows of every sequence whose prompt has reached an image, within
    `n_batch` rows in all, each sequence's in llama_decode calls of their own (a batch carries tokens or
    embeddings, never both). A sequence whose image is still being encoded waits; the others go on."""

    def __init__(self, projector: Projector, batch: EmbeddingBatch, encoder: ImageEncoder) -> None:
        self._projector = projector
        self._batch = batch
        self.encoder = encoder
        self.waiting = False  # the last feed found a sequence waiting for its image's encode

    def feed(self, slots: Sequence[Any]) -> tuple[int, list[Any]]:
        """For each sequence (a scheduler's Slot) whose pending prompt starts with an image row: decode the rows
        that are ready, moving their ids from `pending` to `cached`. Returns how many rows went in, and the
        sequences whose image could not be encoded (their requests must end; the encode's error is logged)."""
        fed, budget, failed = 0, self._batch.n_batch, []
        self.waiting = False
        for slot in slots:
            job, pending = slot.job, slot.pending
            if job is None or job.images is None or budget <= 0 or not pending or pending[0] >= 0:
                continue
            chunk, row = job.images.locate(pending[0])
            try:
                rows = self.encoder.rows(chunk, lambda job=job: job.cancelled)
            except Exception:
                logger.exception("an image chunk could not be encoded")
                failed.append(slot)
                continue
            if rows is None:
                self.waiting = True
                continue
            ids = job.images.ids[id(chunk)]
            take = 0
            while take < min(budget, len(pending)) and row + take < len(ids) and pending[take] == ids[row + take]:
                take += 1
            self._batch.decode(rows[row : row + take], seq_id=slot.seq_id, pos=len(slot.cached))
            slot.cached.extend(pending[:take])
            del pending[:take]
            fed += take
            budget -= take
        return fed, failed

    def close(self) -> None:
        self.encoder.close()
        self._batch.free()
