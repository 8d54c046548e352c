"""The one stream class: the deltas of one request, arriving on a queue.

An async iterator that ends after the delta carrying a finish reason, or raises the failure it receives instead;
closing it early cancels the request. Used on both sides of the worker pipe (the scheduler's jobs in the worker,
the remote streams in the HTTP process); each says how its request starts and how it is given back."""

from __future__ import annotations

import asyncio
from typing import Any

from server.engine.base import GenerationDelta


class DeltaStream:
    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self._queue = queue
        self._ended = False  # nothing more will be read from it
        self._released = False  # what the request holds was given back (once)

    def __aiter__(self) -> DeltaStream:
        return self

    async def __anext__(self) -> GenerationDelta:
        if self._ended:
            raise StopAsyncIteration
        self._begin()
        try:
            item = await self._queue.get()
        except BaseException:  # the consumer was cancelled while waiting: so is the request
            await self.aclose()
            raise
        if isinstance(item, BaseException):
            self._end(cancel=False)
            raise item
        if item.finish_reason is not None:
            self._end(cancel=False)
        return item

    async def aclose(self) -> None:
        self._end(cancel=True)

    def _end(self, *, cancel: bool) -> None:
        self._ended = True
        self._give_back(cancel=cancel)

    def _give_back(self, *, cancel: bool) -> None:
        if not self._released:
            self._released = True
            self._release(cancel=cancel)

    def _begin(self) -> None:
        """Start the request, on first use (a hook; nothing by default). Raising ends the stream."""

    def _release(self, *, cancel: bool) -> None:
        """Give back what the request holds; with `cancel`, stop it where it runs (a hook)."""
