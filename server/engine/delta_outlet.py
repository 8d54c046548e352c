"""The worker's one way out to the HTTP process: its pipe, written from more than one thread in a fixed order.

The scheduler thread puts each stream's delta (or failure) here as it makes it and flushes once a decode step, so
a step's deltas cross the pipe in one message without waking the worker's event loop (on two cores, every wakeup
per token is taken from llama.cpp's compute threads), and everything the scheduler makes leaves in the order it
made it. The event loop sends results and errors through `send`, which first flushes what is queued: a request's
error or result never overtakes its deltas.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

DeltaSink = Callable[[Any], None]
"""Where the scheduler's thread hands one request's deltas and its failure (a GenerationDelta or an exception)."""


class Forwarded(Exception):
    """Ends a stream whose failure its sink has already passed on, in order with its deltas."""


class DeltaOutlet:
    def __init__(self, write: Callable[[tuple[Any, ...]], None]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._pending: list[tuple[Any, ...]] = []  # messages in order; consecutive deltas share one

    def put(self, request_id: int, delta: Any) -> None:
        """Queue a delta for the next flush (any thread)."""
        with self._lock:
            if self._pending and self._pending[-1][0] == "deltas":
                self._pending[-1][1].append((request_id, delta))
            else:
                self._pending.append(("deltas", [(request_id, delta)]))

    def put_message(self, message: tuple[Any, ...]) -> None:
        """Queue a message for the next flush, after what is queued already (any thread)."""
        with self._lock:
            self._pending.append(message)

    def flush(self) -> None:
        """Send what is queued, in order."""
        with self._lock:
            self._flush_locked()

    def send(self, message: tuple[Any, ...]) -> None:
        """Send a message after what is queued before it."""
        with self._lock:
            self._flush_locked()
            self._write(message)

    def _flush_locked(self) -> None:
        pending, self._pending = self._pending, []
        for message in pending:
            self._write(message)
