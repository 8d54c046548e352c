"""Stream plumbing for the service: merging the choices of one request, collecting or relaying them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

from server.engine import GenerationDelta

T = TypeVar("T")


async def relay(
    streams: list[AsyncIterator[GenerationDelta]], push: Callable[[int, GenerationDelta], Iterator[T]]
) -> AsyncIterator[T]:
    # aclosing: a client that leaves closes this generator, and with it the engine streams, at once.
    async with contextlib.aclosing(merged(streams)) as deltas:
        async for index, delta in deltas:
            for item in push(index, delta):
                yield item


async def merged(streams: list[AsyncIterator[GenerationDelta]]) -> AsyncIterator[tuple[int, GenerationDelta]]:
    """The deltas of all choices as they come, tagged with the choice index; every stream is closed at the end."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]):  # type: ignore[type-var]
            async for delta in streams[0]:
                yield 0, delta
        return
    # Bounded: a pump waits while the consumer is behind, so each engine stream's own bounded buffer applies.
    queue: asyncio.Queue[tuple[int, GenerationDelta | Exception | None]] = asyncio.Queue(maxsize=len(streams))

    async def pump(index: int, stream: AsyncIterator[GenerationDelta]) -> None:
        try:
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for delta in stream:
                    await queue.put((index, delta))
        except Exception as exc:
            await queue.put((index, exc))
        await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
