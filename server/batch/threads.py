"""Work in threads that a cancel does not abandon. A thread cannot be stopped: a caller cancelled while it runs
leaves it to finish, and whoever closes what it uses (the store, at shutdown) waits for `finished` first."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ThreadWork:
    def __init__(self) -> None:
        self._running: set[asyncio.Future[Any]] = set()

    def start(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        future = asyncio.ensure_future(asyncio.to_thread(work, *args, **kwargs))
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        return future

    async def run(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`work(*args, **kwargs)` in a thread; a cancel of the caller does not cancel it."""
        return await asyncio.shield(self.start(work, *args, **kwargs))

    async def finished(self) -> None:
        """Returns once every piece of work started so far has ended (whatever it raised)."""
        await asyncio.gather(*self._running, return_exceptions=True)
