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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from server.engine.base import EngineCounters, RGBImage
from server.engine.image_feed import EmbeddingBatch
from server.engine.vision import ImageChunk, Projector, VisionPrompt
from server.errors import InvalidRequestError

logger = logging.getLogger(__name__)

ENCODED_CACHE_BYTES = 64 * 1024 * 1024
"""Encoded image chunks kept for the next request that sends the same image (its KV may be gone meanwhile)."""
MAX_KEPT_FAILURES = 64  # encode errors kept for the request that asks next (a cancelled one never asks)


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
        self.pinned: dict[str, np.ndarray] = {}  # encoded rows of chunks being fed, by key (scheduler thread only)
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
        self.pinned = {}


class Wake(threading.Condition):
    """The scheduler's condition, with a count of the events that may give it work (a request queued or cancelled,
    an image encoded): it sleeps only while the count is the one it saw before its last step."""

    def __init__(self) -> None:
        super().__init__()
        self.events = 0

    def signal(self) -> None:
        with self:
            self.events += 1
            self.notify_all()


class ImageEncoder:
    """Encodes image chunks one at a time on its own thread. Finished results go into a cache of recent chunks
    (by key, within ENCODED_CACHE_BYTES), from which a request takes them; `rows` is asked on the scheduler
    thread, the results come on the encoder's, each signalling the scheduler's Wake."""

    def __init__(self, projector: Projector, wake: Wake, counters: EngineCounters) -> None:
        self._projector = projector
        self._wake = wake
        self._counters = counters
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="image-encoder")
        self._lock = threading.Lock()  # over the three below: the encoder's thread writes them too
        self._done: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._done_bytes = 0
        self._running: set[str] = set()
        self._failed: collections.OrderedDict[str, BaseException] = collections.OrderedDict()

    def rows(self, chunk: ImageChunk, cancelled: Callable[[], bool]) -> np.ndarray | None:
        """The chunk's embeddings when they are ready; else None, and its encode is under way. Raises what its
        encode raised (once, to the request that asks next)."""
        key = chunk.key
        with self._lock:
            found = self._done.get(key)
            if found is not None:
                self._done.move_to_end(key)
                return found
            failure = self._failed.pop(key, None)
            if failure is not None:
                raise failure
            if key in self._running:
                return None
            self._running.add(key)
        self._pool.submit(self._encode, chunk, cancelled)
        return None

    def release(self, prompt: ImagePrompt) -> None:
        """Free a request's chunks after any encode of them already queued (on the encoder's own thread)."""
        try:
            self._pool.submit(prompt.close)
        except RuntimeError:  # shut down: nothing encodes any more
            prompt.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    def _encode(self, chunk: ImageChunk, cancelled: Callable[[], bool]) -> None:
        rows = failure = None
        try:
            if not cancelled():  # else skipped: its request left before its turn came
                rows = self._projector.encode(chunk)
                self._counters.image_chunks_encoded += 1
        except Exception as exc:
            failure = exc
        with self._lock:
            self._running.discard(chunk.key)
            if failure is not None:
                self._failed[chunk.key] = failure
                while len(self._failed) > MAX_KEPT_FAILURES:
                    self._failed.popitem(last=False)
            elif rows is not None:
                self._keep(chunk.key, rows)
        self._wake.signal()  # an event the scheduler may be sleeping for

    def _keep(self, key: str, rows: np.ndarray) -> None:
        self._done[key] = rows
        self._done_bytes += rows.nbytes
        while self._done_bytes > ENCODED_CACHE_BYTES and len(self._done) > 1:  # the newest stays, however large
            _, dropped = self._done.popitem(last=False)
            self._done_bytes -= dropped.nbytes


class ImageStep:
    """Each step, before the token batch: the next rows of every sequence whose prompt has reached an image, within
    `n_batch` rows in all (a batch request's within what the batch share leaves it), each sequence's in
    llama_decode calls of their own (a batch carries tokens or embeddings, never both). A sequence whose image is
    still being encoded waits; the others go on. A chunk's rows stay with its request until it is fed whole."""

    def __init__(self, batch: EmbeddingBatch, encoder: ImageEncoder) -> None:
        self._batch = batch
        self.encoder = encoder
        self.waiting = False  # the last feed found a sequence waiting for its image's encode

    def feed(self, slots: Sequence[Any], batch_budget: int | None = None) -> tuple[int, list[Any], int]:
        """For each sequence (a scheduler's Slot) whose pending prompt starts with an image row: decode the rows
        that are ready, moving their ids from `pending` to `cached`. Returns how many rows went in, the sequences
        whose image could not be encoded (their requests must end; the error is logged), and how many of the rows
        were batch requests' (at most `batch_budget`; None: no bound)."""
        fed, budget, failed, batch_fed = 0, self._batch.n_batch, [], 0
        self.waiting = False
        for slot in slots:
            job, pending = slot.job, slot.pending
            if job is None or job.images is None or budget <= 0 or not pending or pending[0] >= 0:
                continue
            limit = budget
            if job.batch and batch_budget is not None:
                limit = min(limit, batch_budget - batch_fed)
                if limit <= 0:
                    continue
            chunk, row = job.images.locate(pending[0])
            rows = job.images.pinned.get(chunk.key)
            if rows is None:
                try:
                    rows = self.encoder.rows(chunk, lambda job=job: job.cancelled)
                except Exception:
                    logger.exception("an image chunk could not be encoded")
                    failed.append(slot)
                    continue
                if rows is None:
                    self.waiting = True
                    continue
                job.images.pinned[chunk.key] = rows
            ids = job.images.ids[id(chunk)]
            take = 0
            while take < min(limit, len(pending)) and row + take < len(ids) and pending[take] == ids[row + take]:
                take += 1
            self._batch.decode(rows[row : row + take], seq_id=slot.seq_id, pos=len(slot.cached))
            slot.cached.extend(pending[:take])
            del pending[:take]
            if row + take == len(ids):  # fed whole
                job.images.pinned.pop(chunk.key, None)
            fed += take
            budget -= take
            if job.batch:
                batch_fed += take
        return fed, failed, batch_fed

    def close(self) -> None:
        self.encoder.close()
        self._batch.free()
