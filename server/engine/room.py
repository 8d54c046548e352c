"""A signal for batch requests waiting for a free sequence: `wait()` returns at the next `notify()` (a request was
released, or the engine is gone), so a waiter is woken, never polls."""

from __future__ import annotations

import asyncio
import contextlib


class RoomSignal:
    def __init__(self) -> None:
        self._event: asyncio.Event | None = None  # made by the first waiter of a round, dropped at its notify
        self._loop: asyncio.AbstractEventLoop | None = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        await self._event.wait()

    def notify(self) -> None:
        """Wake every waiter of this round; safe from any thread (a stream collected elsewhere, a dying worker)."""
        event, loop, self._event = self._event, self._loop, None
        if event is None or loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits on it any more
                loop.call_soon_threadsafe(event.set)
