"""A request's images on the scheduler's side, with a fake projector: chunks found by their rows' pseudo ids,
encoded on the encoder's own thread (kept for the next request, skipped once cancelled), and fed into sequences
within each step's budget while a sequence whose image is not encoded yet waits."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from server.engine.base import EngineCounters, RGBImage
from server.engine.image_inputs import ENCODED_CACHE_BYTES, ImageEncoder, ImagePrompt, ImageStep, Wake
from server.engine.vision import ImageChunk, TextChunk, VisionPrompt
from server.errors import InvalidRequestError

ROWS = 3


def image(value: int) -> RGBImage:
    return RGBImage(1, 1, bytes([value] * 3))


class FakeProjector:
    """Each image: a framing token, ROWS rows of embeddings (every value the image's first byte), a framing token."""

    def __init__(self) -> None:
        self.encoded: list[str] = []
        self.gate: threading.Event | None = None  # set: encodes wait for it
        self.failure: Exception | None = None
        self.closed: list[ImageChunk] = []

    def tokenize(self, parts):
        [picture] = parts
        chunk = ImageChunk(ROWS, f"{picture.digest}:0", 0, handle=0)
        chunk.value = picture.pixels[0]
        return VisionPrompt([TextChunk((1,)), chunk, TextChunk((2,))], 1)

    def encode(self, chunk: ImageChunk) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(timeout=10)
        if self.failure is not None:
            raise self.failure
        self.encoded.append(chunk.key)
        return np.full((chunk.n_tokens, 2), chunk.value, dtype=np.float32)


class FakeBatch:
    def __init__(self, n_batch: int) -> None:
        self.n_batch = n_batch
        self.decoded: list[tuple[int, int, list[float]]] = []  # seq_id, pos, first value of each row

    def decode(self, rows: np.ndarray, *, seq_id: int, pos: int) -> None:
        assert 0 < len(rows) <= self.n_batch
        self.decoded.append((seq_id, pos, [float(r[0]) for r in rows]))

    def free(self) -> None:
        pass


def prompt_of(projector: FakeProjector, *values: int) -> tuple[list[int], list[RGBImage]]:
    images = [image(v) for v in values]
    tokens = [7]
    for picture in images:
        tokens += [*projector.tokenize([picture]).cache_tokens(), 8]
    return tokens, images


@pytest.fixture
def projector() -> FakeProjector:
    return FakeProjector()


@pytest.fixture
def encoder(projector):
    wake = Wake()
    encoder = ImageEncoder(projector, wake, EngineCounters())
    encoder.wake = wake
    yield encoder
    if projector.gate is not None:
        projector.gate.set()
    encoder.close()


def ready(encoder: ImageEncoder, chunk: ImageChunk, cancelled=lambda: False) -> np.ndarray:
    """Ask until the rows are there, waking on each finished encode (as the scheduler does)."""
    with encoder.wake:
        while True:
            seen = encoder.wake.events  # before asking: an encode may end (and signal) within the call
            rows = encoder.rows(chunk, cancelled)
            if rows is not None:
                return rows
            assert encoder.wake.wait_for(lambda seen=seen: encoder.wake.events != seen, timeout=10)


def test_an_image_prompt_finds_each_row_by_its_pseudo_id(projector):
    tokens, images = prompt_of(projector, 10, 20)
    prompt = ImagePrompt(projector, images, tokens)
    rows = [prompt.locate(token) for token in tokens if token < 0]
    assert [(chunk.value, row) for chunk, row in rows] == [(10, 0), (10, 1), (10, 2), (20, 0), (20, 1), (20, 2)]


def test_image_ids_that_match_no_image_of_the_request_are_a_400(projector):
    tokens, _ = prompt_of(projector, 10)
    with pytest.raises(InvalidRequestError):
        ImagePrompt(projector, [image(11)], tokens)


def test_a_prompt_that_ends_with_an_image_row_is_a_400(projector):
    tokens, images = prompt_of(projector, 10)
    with pytest.raises(InvalidRequestError):
        ImagePrompt(projector, images, tokens[:-2])


def test_the_encoder_works_on_its_own_thread_and_keeps_what_it_encoded(projector, encoder):
    tokens, images = prompt_of(projector, 10)
    chunk, _ = ImagePrompt(projector, images, tokens).locate(tokens[2])
    projector.gate = threading.Event()
    assert encoder.rows(chunk, lambda: False) is None  # under way, not waited for
    assert encoder.rows(chunk, lambda: False) is None
    projector.gate.set()
    assert ready(encoder, chunk)[0, 0] == 10
    again, _ = ImagePrompt(projector, images, tokens).locate(tokens[2])
    assert encoder.rows(again, lambda: False)[0, 0] == 10  # the same image later: not encoded again
    assert projector.encoded == [chunk.key]


def test_an_encode_whose_request_was_cancelled_before_its_turn_is_skipped(projector, encoder):
    tokens, images = prompt_of(projector, 10)
    chunk, _ = ImagePrompt(projector, images, tokens).locate(tokens[2])
    assert encoder.rows(chunk, lambda: True) is None
    with encoder.wake:
        assert encoder.wake.wait_for(lambda: encoder.wake.events == 1, timeout=10)
    assert projector.encoded == []
    assert ready(encoder, chunk)[0, 0] == 10  # asked again by a live request: encoded then


def test_an_encode_failure_reaches_the_scheduler(projector, encoder):
    tokens, images = prompt_of(projector, 10)
    chunk, _ = ImagePrompt(projector, images, tokens).locate(tokens[2])
    projector.failure = RuntimeError("mtmd_encode_chunk returned 1")
    with pytest.raises(RuntimeError, match="mtmd_encode_chunk"):
        ready(encoder, chunk)


def test_a_released_prompt_is_freed_only_after_the_encode_already_queued(projector, encoder):
    tokens, images = prompt_of(projector, 10)
    prompt = ImagePrompt(projector, images, tokens)
    chunk, _ = prompt.locate(tokens[2])
    projector.gate = threading.Event()
    encoder.rows(chunk, lambda: False)
    encoder.release(prompt)
    assert prompt._prompts  # still held: its chunk is being encoded
    projector.gate.set()
    encoder.close()
    assert prompt._prompts == []


def slot(seq_id: int, tokens: list[int], prompt: ImagePrompt, prefilled: int = 2, batch=False) -> SimpleNamespace:
    """A scheduler's sequence whose text is prefilled up to its image."""
    job = SimpleNamespace(images=prompt, cancelled=False, batch=batch)
    return SimpleNamespace(seq_id=seq_id, job=job, cached=tokens[:prefilled], pending=tokens[prefilled:])


def image_slot(projector: FakeProjector, seq_id: int, value: int, *, batch=False) -> tuple[SimpleNamespace, list[int]]:
    """A sequence whose prompt holds an image of `value`, and the prompt's tokens."""
    tokens, images = prompt_of(projector, value)
    return slot(seq_id, tokens, ImagePrompt(projector, images, tokens), batch=batch), tokens


def test_a_step_feeds_ready_rows_and_a_sequence_waiting_for_its_encode_waits(projector, encoder):
    batch = FakeBatch(n_batch=4)
    step = ImageStep(batch, encoder)
    a, tokens_a = image_slot(projector, 0, 10)
    b, _tokens_b = image_slot(projector, 1, 20)
    ready(encoder, a.job.images.locate(a.pending[0])[0])
    projector.gate = threading.Event()  # b's image is not encoded yet
    assert step.feed([a, b]) == (ROWS, [], 0)
    assert step.waiting
    assert batch.decoded == [(0, 2, [10.0] * ROWS)]
    assert a.cached == tokens_a[: 2 + ROWS] and a.pending == tokens_a[2 + ROWS :]  # its text comes next
    projector.gate.set()
    ready(encoder, b.job.images.locate(b.pending[0])[0])
    assert step.feed([a, b]) == (ROWS, [], 0)
    assert batch.decoded[-1] == (1, 2, [20.0] * ROWS)


def test_rows_beyond_the_steps_budget_wait_for_the_next_step(projector, encoder):
    batch = FakeBatch(n_batch=2)
    step = ImageStep(batch, encoder)
    tokens, images = prompt_of(projector, 10)
    sequence = slot(5, tokens, ImagePrompt(projector, images, tokens))
    ready(encoder, sequence.job.images.locate(sequence.pending[0])[0])
    assert step.feed([sequence]) == (2, [], 0)
    assert step.feed([sequence]) == (1, [], 0)  # the rest of the image; its text is the scheduler's
    assert [(pos, len(values)) for _, pos, values in batch.decoded] == [(2, 2), (4, 1)]
    assert sequence.pending == tokens[2 + ROWS :]


def test_a_sequence_whose_image_cannot_be_encoded_is_reported_and_the_others_fed(projector, encoder):
    batch = FakeBatch(n_batch=8)
    step = ImageStep(batch, encoder)
    a, _tokens_a = image_slot(projector, 0, 10)
    b, _tokens_b = image_slot(projector, 1, 20)
    ready(encoder, a.job.images.locate(a.pending[0])[0])
    projector.failure = RuntimeError("mtmd_encode_chunk returned 1")
    with pytest.raises(RuntimeError):
        ready(encoder, b.job.images.locate(b.pending[0])[0])
    b.job.images.locate(b.pending[0])[0].key += "-again"  # asked again: fails again, now inside the step
    with encoder.wake:
        seen = encoder.wake.events
        assert step.feed([a, b]) == (ROWS, [], 0)  # b's encode is under way
        assert encoder.wake.wait_for(lambda: encoder.wake.events != seen, timeout=10)
    assert step.feed([b]) == (0, [b], 0)  # reported once its encode has ended


def test_a_batch_requests_rows_stay_within_the_batch_share(projector, encoder):
    batch = FakeBatch(n_batch=8)
    step = ImageStep(batch, encoder)
    background, _tokens_a = image_slot(projector, 0, 10, batch=True)
    interactive, _tokens_b = image_slot(projector, 1, 20)
    for sequence in (background, interactive):
        ready(encoder, sequence.job.images.locate(sequence.pending[0])[0])
    assert step.feed([background, interactive], batch_budget=1) == (1 + ROWS, [], 1)
    assert step.feed([background, interactive], batch_budget=0) == (0, [], 0)  # no share left this step


def test_finished_encodes_are_kept_within_the_cache_bound_even_when_nobody_asks_again(projector, encoder):
    """A request that leaves after its encode started never asks for the rows: they go to the bounded cache,
    never to a set that grows with every image sent."""
    chunks = []
    for value in range(5):
        tokens, images = prompt_of(projector, value)
        chunk, _ = ImagePrompt(projector, images, tokens).locate(tokens[2])
        chunks.append(chunk)
        with encoder.wake:
            seen = encoder.wake.events
            assert encoder.rows(chunk, lambda: False) is None
            assert encoder.wake.wait_for(lambda seen=seen: encoder.wake.events != seen, timeout=10)
    assert encoder._running == set()
    assert len(encoder._done) == 5 and encoder._done_bytes <= ENCODED_CACHE_BYTES


def test_a_chunk_being_fed_keeps_its_rows_though_the_cache_drops_them(projector, encoder, monkeypatch):
    monkeypatch.setattr("server.engine.image_inputs.ENCODED_CACHE_BYTES", 1)  # the cache keeps the newest only
    batch = FakeBatch(n_batch=1)
    step = ImageStep(batch, encoder)
    tokens, images = prompt_of(projector, 10)
    sequence = slot(0, tokens, ImagePrompt(projector, images, tokens))
    ready(encoder, sequence.job.images.locate(sequence.pending[0])[0])
    assert step.feed([sequence]) == (1, [], 0)
    tokens_other, images_other = prompt_of(projector, 11)  # another image pushes this one out of the cache
    ready(encoder, ImagePrompt(projector, images_other, tokens_other).locate(tokens_other[2])[0])
    assert step.feed([sequence]) == (1, [], 0)
    assert step.feed([sequence]) == (1, [], 0)
    assert projector.encoded.count(sequence.job.images.locate(tokens[2])[0].key) == 1  # encoded once
    assert sequence.job.images.pinned == {}  # fed whole: let go
