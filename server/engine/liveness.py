"""How the HTTP process tells a hung model worker from a busy one: deadlines, and a watchdog thread that pings.

A worker answers a ping from its asyncio loop, with how long its scheduler has been inside the current step and
how long its running grammar build has taken. A worker that leaves a ping unanswered (its loop or the whole process
is stuck, or stopped), whose scheduler is stuck in one step, or whose grammar build runs (llama.cpp cannot stop
one), for longer than `hang_timeout_s` is hung: the engine kills it and its requests get a 503.
One decode step of a big model on a slow CPU can take tens of seconds, so the defaults are generous.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerDeadlines:
    call_timeout_s: float = 300.0
    """The longest a render, tokenize, counters or embed call waits for the worker's answer."""
    ping_interval_s: float = 10.0
    hang_timeout_s: float = 120.0
    """An unanswered ping, one scheduler step, or one grammar build, longer than this: the worker is hung."""


class Watchdog:
    """Pings a worker every `ping_interval_s` from its own thread and reports it hung (once) by calling `on_hung`
    with the reason. `answered` is called by whoever reads the worker's pipe when a pong arrives."""

    def __init__(
        self,
        name: str,
        deadlines: WorkerDeadlines,
        ping: Callable[[], None],
        on_hung: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._deadlines = deadlines
        self._ping = ping
        self._on_hung = on_hung
        self._clock = clock
        self._unanswered_since: float | None = None
        self._stalled_s = 0.0
        self._building_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watchdog-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def answered(self, stalled_s: float, building_s: float = 0.0) -> None:
        self._unanswered_since = None
        self._stalled_s = stalled_s
        self._building_s = building_s

    def hung(self) -> str | None:
        """Why the worker counts as hung now, or None."""
        limit = self._deadlines.hang_timeout_s
        since = self._unanswered_since
        if since is not None and self._clock() - since > limit:
            return f"a ping unanswered for more than {limit:g} s"
        if self._stalled_s > limit:
            return f"its scheduler stuck in one step for {self._stalled_s:.0f} s"
        if self._building_s > limit:
            return f"a grammar build running for {self._building_s:.0f} s"
        return None

    def tick(self) -> bool:
        """One round: report a hung worker (True), else ping it unless a ping is still unanswered."""
        reason = self.hung()
        if reason is not None:
            self._on_hung(reason)
            return True
        if self._unanswered_since is None:  # one ping at a time: a slow answer is not a pile of pings
            self._unanswered_since = self._clock()
            self._ping()
        return False

    def _run(self) -> None:
        while not self._stop.wait(self._deadlines.ping_interval_s):
            if self.tick():
                return
