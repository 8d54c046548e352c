"""Runs open batches, oldest first, one at a time: validates the input file, runs its lines, writes the output.

A line runs through the live endpoint's own code (`execute`, given by the protocol layer) at batch priority: the
engine admits it only into a free sequence (`NoRoomForBatch` says to wait for one) and ends it at a token
boundary when an interactive request needs the sequence (`PreemptedError`: it runs again later). Each outcome is
committed before the line counts as done; after a restart, the lines without one run, the others never again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from server.batch import input_file
from server.batch.store import BatchRow, BatchStore, FileRow
from server.errors import NoRoomForBatch, PreemptedError
from server.metrics import Metrics

logger = logging.getLogger(__name__)

ROOM_RECHECK_S = 1.0  # a line waiting for a free sequence looks again at least this often
SWEEP_INTERVAL_S = 60.0  # how often expired files are removed while no batch runs
TRANSIENT_STATUSES = frozenset({503})  # the model's worker died or restarts: the line is tried again
TRANSIENT_TRIES = 3


@dataclass(frozen=True)
class LineOutcome:
    """What the live endpoint answered: its status and JSON body (an error body in the protocol's shape)."""

    status_code: int
    body: dict[str, Any]
    tokens: tuple[int, int] = (0, 0)  # prompt and completion tokens, for the batch's usage
    request_id: str = field(default_factory=lambda: f"req_{secrets.token_hex(12)}")


LineExecutor = Callable[[str, Any], Awaitable[LineOutcome]]


class BatchRunner:
    def __init__(
        self,
        store: BatchStore,
        execute: LineExecutor,
        *,
        capacity: Callable[[str, str | None], int],
        metrics: Metrics,
        output_ttl_s: int,
    ) -> None:
        self._store = store
        self._execute = execute
        self._capacity = capacity  # (endpoint, model) -> how many lines of a batch may run at once
        self._metrics = metrics
        self._output_ttl_s = output_ttl_s
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()

    def notify(self) -> None:
        """A batch was created or asked to cancel."""
        self._idle.clear()
        self._wake.set()

    async def settled(self) -> None:
        """Returns once no batch is open (every one has ended)."""
        await self._idle.wait()

    async def run(self) -> None:
        await asyncio.to_thread(self._store.remove_orphan_blobs)
        while True:
            await asyncio.to_thread(self._sweep)
            batches = await asyncio.to_thread(self._store.open_batches)
            self._metrics.batch_queue_depth.set(sum(max(b.total - b.completed - b.failed, 0) for b in batches))
            if not batches:
                self._idle.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SWEEP_INTERVAL_S):
                        await self._wake.wait()
                self._wake.clear()
                continue
            try:
                await self._advance(batches[0])
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("batch %s: failed", batches[0].id)
                await asyncio.to_thread(self._fail, batches[0].id, "internal_error", "The server failed this batch.")

    def _sweep(self) -> None:
        for file_id in self._store.remove_expired_files():
            logger.info("file %s expired and was removed", file_id)

    async def _advance(self, batch: BatchRow) -> None:
        """Move one batch on by a state."""
        store = self._store
        if batch.status == "validating":
            await self._validate(batch)
        elif batch.status == "in_progress":
            if self._expired(batch):
                await self._close(batch, "expired", "batch_expired", "The batch did not finish within its window.")
            else:
                await self._run_lines(batch)
                latest = await asyncio.to_thread(store.batch, batch.id)
                if latest is not None and latest.status == "in_progress" and not self._expired(latest):
                    await asyncio.to_thread(store.update_batch, batch.id, "finalizing", only_from=("in_progress",))
        elif batch.status == "cancelling":
            await self._close(batch, "cancelled", "batch_cancelled", "The batch was cancelled before this line ran.")
        elif batch.status == "finalizing":
            await asyncio.to_thread(self._finalize, batch, "completed")

    async def _validate(self, batch: BatchRow) -> None:
        path = self._store.blobs.path(batch.body["input_file_id"])
        try:
            result = await asyncio.to_thread(input_file.validate, path, batch.body["endpoint"])
        except FileNotFoundError:
            await asyncio.to_thread(self._fail, batch.id, "file_not_found", "The input file was deleted.")
            return
        if result.problems:
            errors = {"object": "list", "data": [problem.as_error() for problem in result.problems]}
            await asyncio.to_thread(
                self._store.update_batch, batch.id, "failed", errors=errors, only_from=("validating",)
            )
            return
        await asyncio.to_thread(
            self._store.update_batch,
            batch.id,
            "in_progress",
            total=result.total,
            model=result.model,
            only_from=("validating",),
        )

    async def _run_lines(self, batch: BatchRow) -> None:
        done = await asyncio.to_thread(self._store.done_lines, batch.id)
        path = self._store.blobs.path(batch.body["input_file_id"])
        pending: Iterator[input_file.InputLine] = (line for line in input_file.requests(path) if line.line not in done)
        stop = asyncio.Event()

        async def lines() -> None:
            for line in pending:  # shared by the workers: each takes the next line
                if stop.is_set() or self._expired(batch):
                    return
                await self._line(batch, line)

        async def watch() -> None:
            while True:  # a cancel (or a new batch) wakes this; only a cancel of this batch stops the lines
                await self._wake.wait()
                self._wake.clear()
                latest = await asyncio.to_thread(self._store.batch, batch.id)
                if latest is None or latest.status != "in_progress":
                    stop.set()
                    return

        width = max(1, self._capacity(batch.body["endpoint"], batch.body.get("model")))
        workers = [asyncio.create_task(lines()) for _ in range(width)]
        watcher = asyncio.create_task(watch())
        try:
            finished = asyncio.gather(*workers)
            await asyncio.wait([finished, watcher], return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():  # cancelled: lines in flight are abandoned (the close records them as not run)
                for worker in workers:
                    worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await finished
        finally:
            watcher.cancel()
            for worker in workers:
                worker.cancel()
            self._wake.set()  # whatever woke the watcher last is looked at again by the main loop

    async def _line(self, batch: BatchRow, line: input_file.InputLine) -> None:
        endpoint, tries = batch.body["endpoint"], 0
        while True:
            try:
                outcome = await self._execute(endpoint, line.body)
            except NoRoomForBatch as busy:  # every sequence serves someone: wait until one is given back
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ROOM_RECHECK_S):
                        await busy.wait()
                continue
            except PreemptedError:  # gave its sequence to an interactive request: run it again
                continue
            tries += 1
            if outcome.status_code in TRANSIENT_STATUSES and tries < TRANSIENT_TRIES:
                continue
            break
        ok = 200 <= outcome.status_code < 300
        record = {
            "id": f"batch_req_{secrets.token_hex(12)}",
            "custom_id": line.custom_id,
            "response": {"status_code": outcome.status_code, "request_id": outcome.request_id, "body": outcome.body},
            "error": None,
        }
        if await asyncio.to_thread(self._store.add_result, batch.id, line.line, ok, record, outcome.tokens):
            self._metrics.batch_lines.labels("done" if ok else "failed").inc()
            self._metrics.batch_queue_depth.dec()

    def _expired(self, batch: BatchRow) -> bool:
        return self._store.now() >= batch.body["expires_at"]

    async def _close(self, batch: BatchRow, status: str, code: str, message: str) -> None:
        """End a batch early: each line that did not run gets an error line saying why; then the output."""

        def close() -> None:
            done = self._store.done_lines(batch.id)
            path = self._store.blobs.path(batch.body["input_file_id"])
            unrun = [
                (
                    line.line,
                    {
                        "id": f"batch_req_{secrets.token_hex(12)}",
                        "custom_id": line.custom_id,
                        "response": None,
                        "error": {"code": code, "message": message},
                    },
                )
                for line in (input_file.requests(path) if batch.total else ())
                if line.line not in done
            ]
            self._store.add_unrun(batch.id, unrun)
            self._metrics.batch_lines.labels("failed").inc(len(unrun))
            self._finalize(batch, status)

        await asyncio.to_thread(close)

    def _finalize(self, batch: BatchRow, status: str) -> None:
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
        store.update_batch(batch.id, status, files=tuple(files), **ids)

    def _fail(self, batch_id: str, code: str, message: str) -> None:
        errors = {"object": "list", "data": [{"code": code, "message": message, "param": None, "line": None}]}
        self._store.update_batch(batch_id, "failed", errors=errors)
