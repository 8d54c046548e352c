"""One turn of one batch: its remaining lines, `width` at a time, each through the live endpoint's code at batch
priority, each outcome committed before it counts.

A line waits while the engine has no room for batch work (`NoRoomForBatch`: woken when a sequence is given
back), runs again when an interactive request takes its sequence (`PreemptedError`), and is tried again after a
pause when the model is briefly unavailable (a 503 while its worker restarts, a 429). A stop (the batch was
cancelled or expired) ends the waits and abandons the lines in flight: the close records each as not run. Past
its turn, while another owner's batch waits, the slice takes no new line and ends once its lines in flight do.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from server.batch.input_file import InputLine, LineFeed
from server.batch.rows import BatchRow, error_record
from server.batch.store import BatchStore
from server.batch.threads import ThreadWork
from server.errors import NoRoomForBatch, PreemptedError
from server.metrics import Metrics

logger = logging.getLogger(__name__)

ROOM_RECHECK_S = 1.0  # a line waiting for a free sequence looks again at least this often
TRANSIENT_STATUSES = frozenset({429, 503})  # the model is loading, restarting or briefly full: try again
TRANSIENT_TRIES = 4
TRANSIENT_PAUSE_S = 1.0  # before the second try; doubled for each further one


@dataclass(frozen=True)
class LineOutcome:
    """What the live endpoint answered: its status and JSON body (an error body in the protocol's shape)."""

    status_code: int
    body: dict[str, Any]
    tokens: tuple[int, int] = (0, 0)  # prompt and completion tokens, for the batch's usage
    request_id: str = field(default_factory=lambda: f"req_{secrets.token_hex(12)}")


LineExecutor = Callable[[str, Any], Awaitable[LineOutcome]]


class BatchSlice:
    def __init__(
        self,
        store: BatchStore,
        execute: LineExecutor,
        metrics: Metrics,
        batch: BatchRow,
        feed: LineFeed,
        *,
        width: int,
        turn_s: float,
    ) -> None:
        self.batch = batch
        self.stop = asyncio.Event()  # cancelled or expired: abandon what is in flight
        self.contended = False  # another owner's batch waits for its turn
        self._unfinished = False  # a line was left without an outcome: for a later turn, or the close
        self._commits = ThreadWork()
        self._store = store
        self._execute = execute
        self._metrics = metrics
        self._feed = feed
        self._width = width
        self._turn_ends = asyncio.get_running_loop().time() + turn_s

    async def run(self) -> bool:
        """Run lines until none is left (True), or the slice stops or its turn ends (False)."""
        workers = [asyncio.create_task(self._worker()) for _ in range(self._width)]
        stopped = asyncio.create_task(self.stop.wait())
        try:
            finished = asyncio.gather(*workers)
            await asyncio.wait([finished, stopped], return_when=asyncio.FIRST_COMPLETED)
            if self.stop.is_set():
                for worker in workers:
                    worker.cancel()
            try:
                await finished
            except asyncio.CancelledError:
                if not self.stop.is_set() or _cancelling():
                    raise  # the runner itself is being cancelled (shutdown): never swallowed
        finally:
            stopped.cancel()
            for worker in workers:
                worker.cancel()
            self._feed.close()
        return not self.stop.is_set() and not self._unfinished and self._feed.exhausted

    async def committed(self) -> None:
        """Returns once every outcome being committed is (a stopped slice's commits run on in their threads)."""
        await self._commits.finished()

    async def _worker(self) -> None:
        while not (self.stop.is_set() or self._expired()):
            line = await self._feed.next()
            if line is None:
                return
            await self._line(line)
            if self._turn_over():
                return

    def _turn_over(self) -> bool:
        return self.contended and asyncio.get_running_loop().time() >= self._turn_ends

    def _expired(self) -> bool:
        return self.batch.expired(self._store.now())

    async def _line(self, line: InputLine) -> None:
        if line.custom_id is None:  # validated, but no longer a request: the server's body bound was lowered since
            message = f"Line {line.line} can no longer be read as a request."
            await self._commit(line, False, error_record(None, "invalid_line", message), (0, 0))
            return
        endpoint, tries, waited = self.batch.body["endpoint"], 0, False
        while True:
            # Not run, for the close to record (stopped, expired) or a later turn: past its turn, a line that had
            # to wait gives way to another owner's batch (which may have room where this one has none).
            if self.stop.is_set() or self._expired() or (waited and self._turn_over()):
                self._unfinished = True
                return
            try:
                outcome = await self._execute(endpoint, line.body)
            except NoRoomForBatch as busy:  # every sequence serves someone: wait until one is given back
                await self._until(busy.wait(), ROOM_RECHECK_S)
                waited = True
                continue
            except PreemptedError:  # gave its sequence to an interactive request: it waits for room again
                waited = True
                continue
            tries += 1
            if outcome.status_code in TRANSIENT_STATUSES and tries < TRANSIENT_TRIES:
                await self._until(asyncio.sleep(TRANSIENT_PAUSE_S * 2 ** (tries - 1)), None)
                continue
            break
        await self._record(line, outcome)

    async def _until(self, wait: Awaitable[Any], timeout_s: float | None) -> None:
        """Wait for `wait`, at most `timeout_s`, and never past a stop."""
        waiting = asyncio.ensure_future(wait)
        stopped = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait([waiting, stopped], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            stopped.cancel()

    async def _record(self, line: InputLine, outcome: LineOutcome) -> None:
        record = {
            "id": f"batch_req_{secrets.token_hex(12)}",
            "custom_id": line.custom_id,
            "response": {"status_code": outcome.status_code, "request_id": outcome.request_id, "body": outcome.body},
            "error": None,
        }
        await self._commit(line, 200 <= outcome.status_code < 300, record, outcome.tokens)

    async def _commit(self, line: InputLine, ok: bool, record: dict[str, Any], tokens: tuple[int, int]) -> None:
        # Shielded: once the outcome is known it is committed (and counted), even when the slice stops meanwhile.
        commit = self._commits.start(self._store.add_result, self.batch.id, line.line, ok, record, tokens)
        commit.add_done_callback(lambda done: self._counted(done, ok))
        await asyncio.shield(commit)

    def _counted(self, commit: asyncio.Future[bool], ok: bool) -> None:
        if not commit.cancelled() and commit.exception() is None and commit.result():
            self._metrics.batch_lines.labels("done" if ok else "failed").inc()
            self._metrics.batch_queue_depth.dec()


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
