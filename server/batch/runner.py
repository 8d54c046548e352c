"""Moves open batches through their states: validates input files, runs lines, writes the output files.

One batch runs its lines at a time (a slice: server/batch/slice.py), as wide as the engine can take batch work;
while it runs, the other batches are validated, cancelled, expired and finalized beside it. Batches of one owner
run oldest first; the owners take turns: past TURN_S, while another owner's batch waits, a slice takes no new
line, and the next turn goes to the owner who had one least recently. Each line's outcome is committed before it
counts; after a restart, the lines without one run, the others never again.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.batch import input_file
from server.batch.rows import BatchRow, FileRow, error_record
from server.batch.slice import BatchSlice, LineExecutor
from server.batch.store import BatchStore
from server.batch.threads import ThreadWork
from server.metrics import Metrics

logger = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 60.0  # how often expired files are removed (and expiry looked at) while nothing wakes the runner
TURN_S = 30.0  # how long one owner's batch runs before another owner's waiting batch gets a turn
CANCELLED = "The batch was cancelled before this line ran."
EXPIRED = "The batch did not finish within its window."
FAILED = "The server failed this batch."
ERROR_PAUSE_S = 5.0  # after a round that failed unexpectedly (the state on disk is looked at again then)


class BatchRunner:
    def __init__(
        self,
        store: BatchStore,
        execute: LineExecutor,
        *,
        capacity: Callable[[str, str | None], int],
        metrics: Metrics,
        output_ttl_s: int,
        max_line_bytes: int,
        turn_s: float = TURN_S,
    ) -> None:
        self._store = store
        self._execute = execute
        self._capacity = capacity  # (endpoint, model) -> how many lines of a batch may run at once
        self._metrics = metrics
        self._output_ttl_s = output_ttl_s
        self._max_line_bytes = max_line_bytes
        self._turn_s = turn_s
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._turns = itertools.count()
        self._last_turn: dict[str, int] = {}  # owner -> the number of the last turn it had
        self._slice: BatchSlice | None = None
        self._running: asyncio.Task[bool] | None = None
        self._threads = ThreadWork()

    def notify(self) -> None:
        """A batch was created or asked to cancel."""
        self._idle.clear()
        self._wake.set()

    async def settled(self) -> None:
        """Returns once no batch is open (every one has ended)."""
        await self._idle.wait()

    async def prepare(self) -> None:
        """Before the server takes requests: remove the blobs a killed process wrote but never recorded (an
        upload in progress could not be told from one)."""
        await self._threads.run(self._store.remove_orphan_blobs)

    async def run(self) -> None:
        try:
            while True:
                self._wake.clear()
                try:
                    await self._round()
                except Exception:  # the loop outlives any one failure; the state on disk is read again
                    logger.exception("batch runner: a round failed")
                    await asyncio.sleep(ERROR_PAUSE_S)
                    continue
                await self._rest(SWEEP_INTERVAL_S)
        finally:
            await self._wind_down()

    async def _wind_down(self) -> None:
        """At shutdown: end the running slice, and wait for the outcomes it is committing and for the runner's
        own work in threads (the store closes next); lines in flight have no outcome and run after the restart."""
        if self._running is not None and self._slice is not None:
            self._running.cancel()
            await asyncio.wait([self._running])
            await self._slice.committed()
        await self._threads.finished()

    async def _rest(self, timeout_s: float) -> None:
        """Until notified, the running slice ends, or `timeout_s` passes."""
        woken = asyncio.create_task(self._wake.wait())
        waits: list[asyncio.Future[Any]] = [woken] if self._running is None else [woken, self._running]
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()

    async def _round(self) -> None:
        if self._running is not None and self._running.done():
            await self._slice_ended()
        try:
            await self._threads.run(self._sweep)
        except Exception:  # batches go on without it; it runs again next round
            logger.exception("batch runner: removing expired files failed")
        batches = await self._threads.run(self._store.open_batches)
        self._metrics.batch_queue_depth.set(sum(max(b.total - b.completed - b.failed, 0) for b in batches))
        if not batches and self._running is None:
            self._idle.set()
            return
        changed = False
        for batch in batches:
            if self._slice is not None and batch.id == self._slice.batch.id:
                if batch.status != "in_progress" or self._expired(batch):
                    self._slice.stop.set()  # cancelled or expired: the slice ends, then the close
                continue
            changed |= await self._guarded(batch)
        if changed:
            self._wake.set()  # states moved on: look again at once
            return
        running = [b for b in batches if b.status == "in_progress" and not self._expired(b)]
        if self._slice is None:
            await self._start(running)
        else:
            self._slice.contended = any(b.owner != self._slice.batch.owner for b in running)

    async def _settle(self, batch: BatchRow) -> bool:
        """Move a batch that is not running lines on by a state; False when there is nothing to do."""
        if batch.status == "validating":
            await self._validate(batch)
        elif batch.status == "cancelling":
            await self._threads.run(self._close, batch, "cancelled", "batch_cancelled", CANCELLED)
        elif batch.status == "finalizing":
            await self._threads.run(self._finalize, batch, "completed")
        elif batch.status == "in_progress" and self._expired(batch):
            await self._threads.run(self._close, batch, "expired", "batch_expired", EXPIRED)
        else:
            return False
        return True

    async def _guarded(self, batch: BatchRow) -> bool:
        """`_settle` one batch; what it raises fails that batch, not the round. False when even that failed
        (the batch is looked at again next round; the others are moved on meanwhile)."""
        try:
            return await self._settle(batch)
        except Exception:
            logger.exception("batch %s: failed", batch.id)
        try:
            await self._threads.run(self._fail, batch)
        except Exception:
            logger.exception("batch %s: could not be recorded as failed", batch.id)
            return False
        return True

    async def _start(self, running: list[BatchRow]) -> None:
        """Give the next turn to the owner who had one least recently (its oldest batch)."""
        oldest: dict[str, BatchRow] = {}
        for batch in running:  # oldest first
            oldest.setdefault(batch.owner, batch)
        self._last_turn = {owner: turn for owner, turn in self._last_turn.items() if owner in oldest}
        if not oldest:
            return
        owner = min(oldest, key=lambda name: self._last_turn.get(name, -1))
        self._last_turn[owner] = next(self._turns)
        batch = oldest[owner]
        done = await self._threads.run(self._store.done_lines, batch.id)
        feed = input_file.LineFeed(self._input(batch), self._max_line_bytes, done)
        width = max(1, self._capacity(batch.body["endpoint"], batch.body.get("model")))
        self._slice = BatchSlice(
            self._store, self._execute, self._metrics, batch, feed, width=width, turn_s=self._turn_s
        )
        self._slice.contended = len(oldest) > 1
        self._running = asyncio.create_task(self._slice.run())

    async def _slice_ended(self) -> None:
        assert self._running is not None and self._slice is not None
        task, ended = self._running, self._slice
        batch = ended.batch
        try:
            await ended.committed()  # before a close records the lines without an outcome
        finally:
            self._running = self._slice = None
        if task.cancelled():
            return  # its lines without an outcome run in a later turn
        try:
            all_run = task.result()
        except Exception:
            logger.exception("batch %s: failed while running its lines", batch.id)
            await self._threads.run(self._fail, batch)
            return
        if all_run:
            await self._threads.run(self._store.update_batch, batch.id, "finalizing", only_from=("in_progress",))

    def _sweep(self) -> None:
        for file_id in self._store.remove_expired_files():
            logger.info("file %s expired and was removed", file_id)

    def _input(self, batch: BatchRow) -> Path:
        return self._store.blobs.path(batch.body["input_file_id"])

    def _expired(self, batch: BatchRow) -> bool:
        return batch.expired(self._store.now())

    async def _validate(self, batch: BatchRow) -> None:
        store = self._store
        try:
            result = await self._threads.run(
                input_file.validate, self._input(batch), batch.body["endpoint"], self._max_line_bytes
            )
        except FileNotFoundError:
            await self._threads.run(self._fail, batch, "file_not_found", "The input file was deleted.")
            return
        if result.problems:
            errors = {"object": "list", "data": [problem.as_error() for problem in result.problems]}
            await self._threads.run(store.update_batch, batch.id, "failed", errors=errors, only_from=("validating",))
            return
        started = functools.partial(store.update_batch, total=result.total, model=result.model)
        await self._threads.run(started, batch.id, "in_progress", only_from=("validating",))

    def _close(self, batch: BatchRow, status: str, code: str, message: str, **fields: Any) -> None:
        """End a batch early: each line that did not run gets an error line saying why; then the output."""
        store = self._store
        try:
            lines = input_file.requests(self._input(batch), self._max_line_bytes, store.done_lines(batch.id))
            unrun = [
                (line.line, error_record(line.custom_id, code, message)) for line in (lines if batch.total else ())
            ]
        except OSError:  # the input file cannot be read: no line to name
            logger.exception("batch %s: its input could not be read to close it", batch.id)
            unrun = []
        self._metrics.batch_lines.labels("failed").inc(store.add_unrun(batch.id, unrun))
        self._finalize(batch, status, **fields)

    def _finalize(self, batch: BatchRow, status: str, **fields: Any) -> None:
        """Write the output and error files from the recorded lines; record them and the end state at once."""
        store, now = self._store, self._store.now()
        ttl = batch.body.get("output_expires_after_s") or self._output_ttl_s
        files, ids = [], {}
        for ok, key, suffix in ((True, "output_file_id", "output"), (False, "error_file_id", "error")):
            lines = store.results(batch.id, ok=ok)
            first = next(lines, None)
            if first is None:
                continue
            file_id = f"file-{secrets.token_hex(12)}"
            size = store.blobs.write_lines(file_id, itertools.chain([first], lines))
            files.append(
                FileRow(file_id, batch.owner, "batch_output", f"{batch.id}_{suffix}.jsonl", size, None, now, now + ttl)
            )
            ids[key] = file_id
        store.update_batch(batch.id, status, files=tuple(files), **ids, **fields)

    def _fail(self, batch: BatchRow, code: str = "internal_error", message: str = FAILED) -> None:
        """End a batch as failed, keeping what its lines answered: the output files hold every line."""
        errors = {"object": "list", "data": [{"code": code, "message": message, "param": None, "line": None}]}
        self._close(batch, "failed", "batch_failed", "The batch failed before this line ran.", errors=errors)
