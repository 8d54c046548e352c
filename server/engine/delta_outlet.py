"""The worker's one way out to the HTTP process: its pipe, written from more than one thread in a fixed order.

The scheduler thread puts each stream's delta here as it makes it and flushes once a decode step, so a step's
deltas cross the pipe in one message without waking the worker's event loop (on two cores, every wakeup per token
is taken from llama.cpp's compute threads). The event loop sends results and errors through `send`, which first
flushes the deltas waiting: a request's error or result never overtakes its deltas.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class DeltaOutlet:
    def __init__(self, write: Callable[[tuple[Any, ...]], None]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._pending: list[tuple[int, Any]] = []

    def put(self, request_id: int, delta: Any) -> None:
        """Queue a delta for the next flush (any thread)."""
        with self._lock:
            self._pending.append((request_id, delta))

    def sink(self, request_id: int) -> Callable[[Any], None]:
        """Where one request's deltas go."""
        return lambda delta: self.put(request_id, delta)

    def flush(self) -> None:
        """Send the queued deltas, all in one message."""
        with self._lock:
            self._flush_locked()

    def send(self, message: tuple[Any, ...]) -> None:
        """Send a message after the deltas queued before it."""
        with self._lock:
            self._flush_locked()
            self._write(message)

    def _flush_locked(self) -> None:
        if self._pending:
            deltas, self._pending = self._pending, []
            self._write(("deltas", deltas))
