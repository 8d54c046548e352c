"""The deltas of one streamed request waiting for their consumer, bounded so that a slow client costs little."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from server.errors import SlowClientError

# A consumer that reads normally takes each delta as it comes; one this many behind has stopped reading its socket
# (a delta is about a token: seconds of generation for a real model).
MAX_BUFFERED_DELTAS = 1024


class DeltaBuffer(asyncio.Queue[Any]):
    """Deltas (and failures) from the worker for one stream. When the consumer falls `limit` deltas behind, the
    buffered deltas are dropped, the stream is left holding only a SlowClientError, and `on_overflow` is called
    once (it cancels the request in the worker, freeing its sequence and admission at once). A failure is always
    taken in, however full the buffer is."""

    def __init__(self, on_overflow: Callable[[], None], limit: int = MAX_BUFFERED_DELTAS) -> None:
        super().__init__()
        self._on_overflow = on_overflow
        self._limit = limit
        self.overflowed = False

    def put_nowait(self, item: Any) -> None:
        if self.overflowed:
            return  # the stream has failed: whatever still arrives for it is dropped
        if isinstance(item, BaseException) or self.qsize() < self._limit:
            super().put_nowait(item)
            return
        self.overflowed = True
        while not self.empty():
            self.get_nowait()
        super().put_nowait(SlowClientError())
        self._on_overflow()
