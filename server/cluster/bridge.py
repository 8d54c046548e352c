"""The server's ASGI app called in-process, one request at a time, its response handed out as a head and then body
chunks: how a Ray Serve replica runs create_app's app without a socket of its own. Knows nothing of Ray."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class RequestHead:
    """What the ingress forwards of an HTTP request besides its body (plain data: it crosses processes)."""

    method: str
    path: str
    query_string: bytes = b""
    headers: Headers = field(default_factory=list)
    client: tuple[str, int] | None = None
    scheme: str = "http"


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: Headers


class AppBridge:
    """Runs an ASGI app's lifespan and its requests inside the current event loop."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lifespan: asyncio.Task[None] | None = None
        self._lifespan_inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._lifespan_outbox: asyncio.Queue[Message] = asyncio.Queue()

    @property
    def app(self) -> Any:
        return self._app

    async def start(self) -> None:
        """Run the app's startup (its lifespan up to the yield); a failed startup raises."""

        async def receive() -> Message:
            return await self._lifespan_inbox.get()

        async def send(message: Message) -> None:
            await self._lifespan_outbox.put(message)

        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.3"}, "state": {}}
        self._lifespan = asyncio.create_task(self._app(scope, receive, send), name="app-lifespan")
        await self._lifespan_inbox.put({"type": "lifespan.startup"})
        reply = await self._lifespan_outbox.get()
        if reply["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"the app did not start: {reply.get('message', reply['type'])}")

    async def stop(self) -> None:
        """Run the app's shutdown (unloads the models, stops their workers)."""
        if self._lifespan is None or self._lifespan.done():
            return
        await self._lifespan_inbox.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(Exception):
            await self._lifespan_outbox.get()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._lifespan

    async def call(self, head: RequestHead, body: bytes) -> AsyncIterator[ResponseHead | bytes]:
        """The response: first its head, then its body chunks as the app sends them. Closing the iterator early
        (the client went away) tells the app the client disconnected, and cancels the request if it goes on."""
        outbox: asyncio.Queue[Message | None] = asyncio.Queue()
        gone = asyncio.Event()
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            await outbox.put(message)

        async def run() -> None:
            try:
                await self._app(_scope(head), receive, send)
            finally:
                await outbox.put(None)

        task = asyncio.create_task(run(), name=f"bridge {head.method} {head.path}")
        started = finished = False
        try:
            while (message := await outbox.get()) is not None:
                if message["type"] == "http.response.start":
                    started = True
                    yield ResponseHead(message["status"], list(message.get("headers", [])))
                elif message["type"] == "http.response.body":
                    if message.get("body"):
                        yield bytes(message["body"])
                    if not message.get("more_body", False):
                        finished = True
                        break
            if not started:
                await task  # the app ended without answering: its error is the caller's
                raise RuntimeError("the app ended without a response")
        finally:
            gone.set()
            if not task.done():
                # A response that ended is given a moment to finish its own bookkeeping (metrics, log line);
                # one cut off early (the client left) is cancelled at once.
                if finished:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(task), timeout=5)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


def _scope(head: RequestHead) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": head.method,
        "scheme": head.scheme,
        "path": head.path,
        "raw_path": head.path.encode("utf-8"),
        "root_path": "",
        "query_string": head.query_string,
        "headers": list(head.headers),
        "client": head.client,
        "server": ("127.0.0.1", 0),
        "state": {},
        "extensions": {},
    }
