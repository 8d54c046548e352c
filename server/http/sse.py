"""Server-sent events: response objects to `data:` lines, a failure mid-stream to an error event, then [DONE].

A stream never just stops: a client that stops reading has its stream ended (and counted), and at shutdown a stream
still running gets a `shutting_down` error event before the server would cut it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from server.errors import APIError, InternalError, ShuttingDownError, SlowClientError, from_exception

logger = logging.getLogger(__name__)

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"
# Top-level keys that OpenAI leaves out of a chunk rather than sending as null.
_OMIT_WHEN_NULL = ("usage", "system_fingerprint")
_END = object()


class StreamCutShortError(ShuttingDownError):
    def __init__(self) -> None:
        APIError.__init__(self, "The server is shutting down; this response was ended before it was complete.")


class ShutdownNotice:
    """Given shortly before the server's shutdown grace period runs out. A stream waiting for its next chunk then
    stops waiting (its source is cancelled, which cancels the generation) and ends with a `shutting_down` error
    event instead of being cut off silently. Give it on the event loop."""

    def __init__(self) -> None:
        self.given = False
        self._waits: set[asyncio.Timeout] = set()

    def give(self) -> None:
        self.given = True
        now = asyncio.get_running_loop().time()
        for wait in list(self._waits):
            wait.reschedule(now)

    async def next_of(self, items: AsyncIterator[T]) -> T | object:
        """The next item, `_END` when there is none, or StreamCutShortError once the notice is given."""
        if self.given:
            raise StreamCutShortError()
        wait = asyncio.timeout(None)
        try:
            async with wait:
                self._waits.add(wait)
                try:
                    return await anext(items)
                except StopAsyncIteration:
                    return _END
                finally:
                    self._waits.discard(wait)
        except TimeoutError:
            if wait.expired():
                raise StreamCutShortError() from None
            raise


def _ignore() -> None:
    return None


async def until_shutdown(items: AsyncIterator[T], shutdown: ShutdownNotice) -> AsyncIterator[T]:
    """The items, or StreamCutShortError (a `shutting_down` APIError) once the notice is given; for protocols
    that frame their own events."""
    async with contextlib.aclosing(items):  # type: ignore[type-var]
        while (item := await shutdown.next_of(items)) is not _END:
            yield item  # type: ignore[misc]


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def chunk_payload(chunk: BaseModel) -> dict[str, Any]:
    payload = chunk.model_dump(mode="json")
    for key in _OMIT_WHEN_NULL:
        if payload.get(key, 0) is None:
            del payload[key]
    return payload


def _failure(exc: Exception, on_slow_client: Callable[[], None]) -> APIError:
    error = from_exception(exc)
    if isinstance(error, InternalError):
        logger.exception("stream failed")
    elif isinstance(error, SlowClientError):
        on_slow_client()
    return error


async def encode(
    chunks: AsyncIterator[BaseModel],
    shutdown: ShutdownNotice | None = None,
    on_slow_client: Callable[[], None] = _ignore,
) -> AsyncIterator[bytes]:
    shutdown = shutdown or ShutdownNotice()
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        try:
            while (chunk := await shutdown.next_of(chunks)) is not _END:
                yield event(chunk_payload(chunk))  # type: ignore[arg-type]
        except Exception as exc:
            yield event(_failure(exc, on_slow_client).body().model_dump(mode="json"))
    yield DONE


async def encode_events(
    events: AsyncIterator[dict[str, Any]],
    shutdown: ShutdownNotice | None = None,
    on_slow_client: Callable[[], None] = _ignore,
) -> AsyncIterator[bytes]:
    """Named events of the Responses API (`event:` line, `sequence_number` in the data); a failure becomes an
    `error` event. This API ends without a [DONE] line."""
    shutdown = shutdown or ShutdownNotice()
    sequence = 0
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        try:
            while (payload := await shutdown.next_of(events)) is not _END:
                yield _named({**payload, "sequence_number": sequence})  # type: ignore[dict-item]
                sequence += 1
        except Exception as exc:
            detail = _failure(exc, on_slow_client).body().error
            yield _named(
                {
                    "type": "error",
                    "code": detail.code,
                    "message": detail.message,
                    "param": detail.param,
                    "sequence_number": sequence,
                }
            )


def _named(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()


class _SendTimedOut(Exception):
    pass


class EventStreamResponse(StreamingResponse):
    """An SSE response whose client must keep reading. A send that waits longer than `send_timeout_s` (the
    client's socket is full: it stopped reading) ends the stream: its body iterator is closed, which cancels the
    generation and frees the model, and `on_client_timeout` is called. The status was sent long ago, so the
    response just stops; the connection is closed. `closing`, when given, is closed however the response ends:
    also when the client left before the body started (an unstarted body runs none of its cleanup)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        send_timeout_s: float,
        on_client_timeout: Callable[[], None],
        closing: AsyncIterator[Any] | None = None,
    ) -> None:
        super().__init__(body, headers={"Cache-Control": "no-cache"})
        self._send_timeout_s = send_timeout_s
        self._on_client_timeout = on_client_timeout
        self._closing = closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._closing is not None:
                await self._closing.aclose()  # type: ignore[attr-defined]

    async def stream_response(self, send: Send) -> None:
        async def send_in_time(message: Message) -> None:
            try:
                async with asyncio.timeout(self._send_timeout_s):
                    await send(message)
            except TimeoutError:
                raise _SendTimedOut from None

        try:
            async with contextlib.aclosing(self.body_iterator):  # type: ignore[type-var]
                await super().stream_response(send_in_time)
        except _SendTimedOut:
            logger.warning("a streaming client read nothing for %g s: stream ended", self._send_timeout_s)
            self._on_client_timeout()


def event_stream(
    request: Any,
    record: Any,
    body: Callable[[ShutdownNotice, Callable[[], None]], AsyncIterator[bytes]],
    closing: AsyncIterator[Any] | None = None,
) -> EventStreamResponse:
    """An SSE response with this server's rules: `body(shutdown_notice, on_slow_client)` makes the bytes (it ends
    with an error event when the notice is given); a client that stops reading is cut after the send timeout
    and counted once in the metrics."""
    state = request.app.state
    slow_client = partial(state.metrics.observe_client_timeout, record)
    return EventStreamResponse(
        body(state.shutdown_notice, slow_client),
        send_timeout_s=state.settings.stream_send_timeout_s,
        on_client_timeout=slow_client,
        closing=closing,
    )
