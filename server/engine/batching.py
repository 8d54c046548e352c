"""Continuous batching over one llama.cpp context: every active request advances in one `llama_decode` a step.

A scheduler thread owns the context. Each step it admits waiting requests into free sequences (reusing the
longest cached prefix), builds one batch with the next token of every decoding sequence plus prompt chunks of
prefilling ones, decodes once, samples each sequence from its own logits and pushes text deltas to the
requests' asyncio queues. Cancelled requests are dropped at the next step.

With speculative decoding (models.yaml `speculative`), a decoding sequence's next token is followed in the same
batch by tokens drafted by prompt lookup (server/engine/speculative.py); server/engine/step_sampler.py keeps them
up to the first one the model's own sampling disagrees with.

Batch requests (`priority="batch"`) run only in the capacity interactive ones leave: waiting interactive requests
are placed first, and one that finds every sequence busy takes a batch request's sequence at the step boundary
(that request ends with PreemptedError; its KV stays as a prefix cache for the retry).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Sequence

import llama_cpp

from server.config import SpeculativeSpec
from server.engine.admission import Admission
from server.engine.base import EngineCounters, GenerationRequest
from server.engine.batch_share import BatchSequence, BatchShare
from server.engine.batch_slots import Job, Slot, discard
from server.engine.delta_outlet import DeltaOutlet, DeltaSink
from server.engine.draft_model import DraftModel
from server.engine.draft_placement import DraftPlacement
from server.engine.image_feed import EmbeddingBatch
from server.engine.image_inputs import ImageEncoder, ImagePrompt, ImageStep, Wake
from server.engine.native import NativeModel, make_sampler
from server.engine.prefix import SlotView, place, should_wait
from server.engine.reasoning import ThinkingLimit
from server.engine.step_sampler import StepSampler
from server.engine.vision import Projector
from server.errors import InternalError, OverloadedError, PreemptedError

logger = logging.getLogger(__name__)


class BatchScheduler:
    def __init__(
        self,
        native: NativeModel,
        *,
        n_seq: int,
        n_ctx: int,
        n_batch: int,
        max_queue: int,
        speculative: SpeculativeSpec | None = None,
        draft_model: DraftModel | None = None,
        projector: Projector | None = None,
    ) -> None:
        self._native = native
        self._drafts = DraftPlacement(speculative, draft_model, n_ctx)
        self._n_batch = n_batch
        self._max_queue = max_queue
        self._slots = [Slot(seq_id=i) for i in range(n_seq)]
        self._waiting: collections.deque[Job] = collections.deque()
        self._wake = Wake()
        self._stopping = False
        self._uses = 0
        self._adopted = 0  # the ranks given to restored sequences (a later use ranks above them)
        self._share = BatchShare()  # what batch requests may take of each step (server/engine/batch_share.py)
        self._thread = threading.Thread(target=self._run, name="llama-scheduler", daemon=True)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._memory = llama_cpp.llama_get_memory(native.ctx)
        self.counters = EngineCounters()
        self.step_started: float | None = None  # monotonic start of the running step; None while idle (watchdog)
        # Where the deltas of jobs with a sink are flushed after each step (the worker's pipe); None: no such jobs.
        self.outlet: DeltaOutlet | None = None
        self._sampler = StepSampler(native, self._memory, self.counters, n_ctx=n_ctx, finish=self._finish)
        self._images = (
            None
            if projector is None
            else ImageStep(
                EmbeddingBatch(native.ctx, projector.n_embd, n_batch),
                ImageEncoder(projector, self._wake, self.counters),
            )
        )

    def start(self) -> None:
        self._thread.start()

    def adopt(self, restored: Sequence[tuple[int, list[int]]]) -> None:
        """Before start: sequences whose KV was restored from a saved prompt cache, most recent first. They rank
        as used more recently than the empty ones, so a request that shares nothing with them takes an empty one."""
        for rank, (seq_id, tokens) in enumerate(restored):
            slot = self._slots[seq_id]
            slot.cached = list(tokens)
            slot.last_used = len(restored) - rank
        self._uses = self._adopted = max(self._uses, len(restored))

    def cached_sequences(self) -> list[tuple[int, list[int]]]:
        """After stop: each sequence's id and the tokens whose KV it holds, most recently used first; a restored
        prefix no request has used since is left out (it is saved already, and stays as unused as it was)."""
        ordered = sorted(self._slots, key=lambda slot: slot.last_used, reverse=True)
        return [(slot.seq_id, list(slot.cached)) for slot in ordered if slot.cached and slot.last_used > self._adopted]

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            for job in [*self._waiting, *(slot.job for slot in self._slots if slot.job is not None)]:
                job.cancelled = True  # an image encode queued for one is skipped: unloading waits for none
            self._wake.notify()
        self._thread.join()
        llama_cpp.llama_batch_free(self._batch)
        for slot in self._slots:
            self._release(slot)
            if slot.job is not None:
                discard(slot.job, self._release_images)
        for job in self._waiting:
            discard(job, self._release_images)
        if self._images is not None:
            self._images.close()

    def submit(
        self,
        request: GenerationRequest,
        grammar: llama_cpp.llama_sampler_p | None = None,
        *,
        thinking: ThinkingLimit | None = None,
        shown: frozenset[int] = frozenset(),
        images: ImagePrompt | None = None,
        sink: DeltaSink | None = None,
    ) -> Job:
        """Queue a request (with its compiled grammar sampler and its images' chunks, which the scheduler then owns
        and frees, and its thinking budget); raises OverloadedError (429) at once when the wait queue is full. Only
        interactive requests count, and only an interactive one is refused: batch requests yield their sequences
        to them. With a `sink` (which must feed `outlet`), each delta and the failure are handed to it on this
        thread, and the job's stream yields only the last delta (or raises Forwarded)."""
        job = Job(request, asyncio.get_running_loop(), self._wake, grammar, thinking, shown, images, sink)
        with self._wake:
            if not job.batch:
                running = sum(slot.job is not None and not slot.job.batch for slot in self._slots)
                waiting = sum(not waiting.batch for waiting in self._waiting)
                try:
                    Admission(len(self._slots), self._max_queue).check(running + waiting)
                except OverloadedError:
                    discard(job, self._release_images)
                    raise
            self._waiting.append(job)
            self.counters.queue_depth = len(self._waiting)
            self._wake.events += 1
            self._wake.notify()
        return job

    def _run(self) -> None:
        while True:
            try:
                with self._wake:
                    while not self._stopping and not self._waiting and not self._busy():
                        self.step_started = None
                        self._wake.wait()
                    if self._stopping:
                        break
                    self.step_started = time.monotonic()
                    self._admit()
                    seen = self._wake.events
                stepped = self._step()
                self._flush()
                if not stepped and self._images is not None and self._images.waiting:
                    # Nothing to do until an image is encoded (waiting requests wait for a sequence that waits for
                    # it): sleep until an encode ends, or a request comes or leaves.
                    with self._wake:
                        if seen == self._wake.events and not self._stopping:
                            self.step_started = None
                            self._wake.wait()
            except Exception:
                # Whatever failed, the requests in flight get an error and the loop lives on for the next ones.
                logger.exception("scheduler step failed")
                self._fail_all()
                self._flush()
        with self._wake:
            for job in self._waiting:
                job.emit(InternalError())
        self._flush()

    def _flush(self) -> None:
        """Send what this thread gave the outlet: a step's deltas in one message, and failures in their order."""
        if self.outlet is not None:
            self.outlet.flush()

    def _fail_all(self) -> None:
        with self._wake:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for job in waiting:
            discard(job, self._release_images)
            job.emit(InternalError())
        for slot in self._slots:
            if slot.job is not None:
                job = slot.job
                self._finish(slot, keep_cache=False)
                job.emit(InternalError())

    def _reuse_prefix(self, slot: Slot, source: Slot, reuse: int) -> int:
        """Make `slot` hold the first `reuse` tokens (its own, or shared from `source`); returns how many it holds."""
        memory = self._memory
        if source is not slot:
            # Each sequence has its own KV stream: llama.cpp copies the whole stream (at the next decode, before
            # that step's tokens are written), then the tail beyond the shared prefix is dropped below.
            llama_cpp.llama_memory_seq_cp(memory, source.seq_id, slot.seq_id, -1, -1)
        if llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, reuse, -1):
            return reuse
        llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, -1, -1)
        return 0

    def _busy(self) -> bool:
        return any(slot.job is not None for slot in self._slots)

    def _admit(self) -> None:
        """Admit waiting requests while sequences are free: interactive ones first, each class in arrival order;
        an interactive request that finds none free takes a batch request's sequence."""
        if any(job.cancelled for job in self._waiting):
            for job in self._waiting:
                if job.cancelled:
                    discard(job, self._release_images)
            self._waiting = collections.deque(job for job in self._waiting if not job.cancelled)
        for slot in self._slots:  # cancelled ones free their sequences now: not preempted in their place
            if slot.job is not None and slot.job.cancelled:
                self._finish(slot, keep_cache=True)
        while self._waiting:
            job = self._next_waiting()
            prompt = list(job.request.prompt_tokens)
            views = [
                SlotView(
                    s.cached,
                    # An interactive request never waits for a batch request's prefill, which goes slowly beside it.
                    () if s.job is not None and s.job.batch and not job.batch else s.pending,
                    busy=s.job is not None,
                    last_used=s.last_used,
                )
                for s in self._slots
            ]
            placement = place(prompt, views)
            if placement is None and not job.batch and self._preempt_batch():
                continue  # placed at the next turn, in the sequence just freed
            if placement is None or should_wait(prompt, views, placement.reuse):
                break
            self._waiting.remove(job)
            try:
                sampler = make_sampler(job.request.sampling, self._native)
            except Exception:
                logger.exception("could not build the sampler of a request")
                discard(job, self._release_images)
                job.emit(InternalError())
                continue
            slot = self._slots[placement.slot]
            reuse = self._reuse_prefix(slot, self._slots[placement.source], placement.reuse)
            self._uses += 1
            slot.take(job, sampler, prompt, reuse, self._uses)
            self._drafts.start(slot, prompt)
            self.counters.prefix_cache_hit_tokens += reuse
        self.counters.queue_depth = len(self._waiting)
        self.counters.active_sequences = sum(slot.job is not None for slot in self._slots)

    def _batch_sequences(self) -> list[BatchSequence]:
        return [
            BatchSequence(slot.seq_id, slot.generated, len(slot.cached))
            for slot in self._slots
            if slot.job is not None and slot.job.batch
        ]

    def _next_waiting(self) -> Job:
        """The oldest waiting interactive request, else the oldest waiting batch one."""
        return next((job for job in self._waiting if not job.batch), self._waiting[0])

    def _preempt_batch(self) -> bool:
        """End the batch request that has generated the least (the least work lost), between two steps, to free
        its sequence for an interactive request; its KV stays cached, so its retry's prefill is mostly reused.
        False when no sequence runs a batch request."""
        victim = BatchShare.victim(self._batch_sequences())
        if victim is None:
            return False
        slot = self._slots[victim]
        job, generated = slot.job, slot.generated
        assert job is not None
        self._finish(slot, keep_cache=True)
        self.counters.batch_preemptions += 1
        logger.debug("a batch request gave its sequence to an interactive one after %d tokens", generated)
        job.emit(PreemptedError())
        return True

    def _step(self) -> bool:
        """One step of work; False when there was none to do (every sequence waits)."""
        for slot in self._slots:
            if slot.job is not None and slot.job.cancelled:
                self._finish(slot, keep_cache=True)
        batch = self._batch
        n = 0
        interactive = self._share.beside_interactive(
            any(not job.batch for job in self._waiting)
            or any(slot.job is not None and not slot.job.batch for slot in self._slots)
        )
        paused = self._share.paused(self._batch_sequences(), interactive)
        # A step cannot be cut short: batch prefill (text or image rows) gets a small share of each, so that an
        # interactive request arriving meanwhile waits at most one short step.
        batch_prefill = self._share.prefill_budget(interactive)
        # image rows go in first: the token batch's logits are read after it
        fed, batch_fed = self._feed_images(paused, batch_prefill)
        batch_prefill -= batch_fed
        decoding = []
        for slot in self._slots:  # one token for each decoding sequence first, so streams keep moving
            slot.batch_index = -1
            if slot.job is not None and slot.next_token is not None and slot.seq_id not in paused:
                n = self._put(batch, n, slot, slot.next_token, logits=True)
                slot.next_token = None
                decoding.append(slot)
        n = self._put_drafts(batch, n, decoding)  # then their drafts, verified in this same step
        room = self._n_batch - fed
        for slot in self._slots:  # then prompt chunks up to the next image, within what is left of the batch
            if slot.job is None or not slot.pending or n >= room or slot.seq_id in paused:
                continue
            take = min(_text_run(slot.pending), room - n)
            if take <= 0:
                continue
            if slot.job.batch:
                take = min(take, batch_prefill)
                if take <= 0:
                    continue
                batch_prefill -= take
            chunk, slot.pending = slot.pending[:take], slot.pending[take:]
            for i, token in enumerate(chunk):
                n = self._put(batch, n, slot, token, logits=not slot.pending and i == take - 1)
            self.counters.prompt_tokens_evaluated += take
        if n == 0:
            return fed > 0
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self._native.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        self.counters.decode_steps += 1
        self.counters.batch_tokens_total += n
        for slot in self._slots:
            if slot.job is not None and slot.batch_index >= 0:
                self._sampler.take_step(slot)
        return True

    def _feed_images(self, paused: set[int] | frozenset[int], batch_budget: int) -> tuple[int, int]:
        if self._images is None:
            return 0, 0
        slots = [slot for slot in self._slots if slot.seq_id not in paused]
        fed, failed, batch_fed = self._images.feed(slots, batch_budget)
        for slot in failed:  # its image could not be encoded: that request ends, the others go on
            job = slot.job
            assert job is not None
            self._finish(slot, keep_cache=True)
            job.emit(InternalError())
        self.counters.prompt_tokens_evaluated += fed
        self.counters.image_rows_evaluated += fed
        return fed, batch_fed

    def _release_images(self, images: ImagePrompt) -> None:
        if self._images is None:
            images.close()
        else:
            self._images.encoder.release(images)

    def _put(self, batch: llama_cpp.llama_batch, n: int, slot: Slot, token: int, *, logits: bool) -> int:
        batch.token[n] = token
        batch.pos[n] = len(slot.cached)
        batch.n_seq_id[n] = 1
        batch.seq_id[n][0] = slot.seq_id
        batch.logits[n] = logits
        slot.cached.append(token)
        if logits:
            slot.batch_index = n
        return n + 1

    def _put_drafts(self, batch: llama_cpp.llama_batch, n: int, decoding: list[Slot]) -> int:
        """Put the tokens drafted after each decoding sequence's next token (server/engine/draft_placement.py)."""
        drafts = self._drafts.propose(decoding, self._n_batch - n)
        for slot in decoding:
            first = slot.batch_index  # the next token's logits: sampled first
            for token in drafts.get(slot.seq_id, ()):
                slot.draft.append(token)
                slot.draft_indices.append(n)
                n = self._put(batch, n, slot, token, logits=True)
            slot.batch_index = first
            self.counters.draft_tokens += len(slot.draft)
        return n

    def _finish(self, slot: Slot, *, keep_cache: bool) -> None:
        """Free the sequence for the next request; its KV stays as a prefix cache unless told otherwise."""
        if not keep_cache:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cached = []
        self._release(slot)
        if slot.job is not None and slot.job.images is not None:
            self._release_images(slot.job.images)
            slot.job.images = None
        slot.job = None
        slot.guard = None
        slot.thinking = None
        slot.pending = []
        slot.next_token = None
        slot.draft, slot.draft_indices = [], []  # a failed step's draft must not meet the sequence's next request
        self.counters.active_sequences = sum(s.job is not None for s in self._slots)

    @staticmethod
    def _release(slot: Slot) -> None:
        if slot.sampler is not None:
            llama_cpp.llama_sampler_free(slot.sampler)
            slot.sampler = None
        if slot.grammar is not None:
            llama_cpp.llama_sampler_free(slot.grammar)
            slot.grammar = None


def _text_run(pending: list[int]) -> int:
    """How many of the pending prompt's first ids are text tokens (up to its next image row, a negative id)."""
    return next((i for i, token in enumerate(pending) if token < 0), len(pending))
