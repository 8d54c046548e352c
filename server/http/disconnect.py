"""Whole (not streamed) answers that stop when their client goes away: the work is cancelled, and with it the
generation, so a client that leaves frees its sequence at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from fastapi import Request
from fastapi.responses import Response

logger = logging.getLogger(__name__)

# nginx's code for "client closed the request"; nobody receives it, but the access log tells what happened.
CLIENT_CLOSED_REQUEST = 499


class ClientLeft(Exception):
    """The client disconnected before the answer was ready; the work was cancelled."""

    def response(self) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)


async def unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """The work's result; ClientLeft (after cancelling it) if the client disconnects first. Its errors propagate."""
    task: asyncio.Future[Any] = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        logger.info("client disconnected; request cancelled")
        raise ClientLeft
    return task.result()


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
