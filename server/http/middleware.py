"""ASGI middleware: request ids, the per-request record (metrics and one log line), body size limit, draining.

The log line carries ids, model, status, token counts and timings, never prompt or completion text. What in it
comes from the client (method, path, request id) is bounded, and json.dumps escapes control characters, so a
hostile request can neither forge log lines nor make one huge.

Written as plain ASGI (not BaseHTTPMiddleware) so that streamed responses pass through untouched and a client
disconnect still reaches the route.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from server.errors import APIError, PayloadTooLargeError, ShuttingDownError, from_exception
from server.http.error_shapes import ErrorShapes
from server.metrics import Metrics, RequestRecord

logger = logging.getLogger("server.requests")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNMETERED_PATHS = frozenset({"/metrics", "/health", "/ready"})
METERED_ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/rerank",
        "/rerank",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/files",
        "/v1/batches",
    }
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # echoed back in a header and logs: keep it tame
MAX_LOGGED_METHOD = 16
MAX_LOGGED_PATH = 256


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        draining: Callable[[], bool],
        error_shapes: ErrorShapes | None = None,
        body_limits: Mapping[str, int] | None = None,
    ) -> None:
        self._app = app
        self._shapes = error_shapes
        self._metrics = metrics
        self._max_body = max_body_bytes
        self._body_limits = dict(body_limits or {})  # paths whose bodies may be larger (file uploads)
        self._draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        given = headers.get("x-request-id", "")
        record = RequestRecord(
            request_id=given if _REQUEST_ID.match(given) else uuid.uuid4().hex,
            method=bounded(scope["method"], MAX_LOGGED_METHOD),
            path=bounded(path, MAX_LOGGED_PATH),
        )
        scope.setdefault("state", {})["record"] = record

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", record.request_id.encode())]
            await send(message)

        try:
            if self._draining() and path not in UNMETERED_PATHS:
                await send_error(send_with_id, ShuttingDownError(), self._shapes, path)
            elif _declared_length(headers) > (limit := self._body_limits.get(path, self._max_body)):
                await send_error(send_with_id, PayloadTooLargeError(limit), self._shapes, path)
            else:
                await self._app(scope, self._limited(receive, limit), send_with_id)
        except Exception as exc:
            # Outermost catch, so the status of a failed request is known here (Starlette's own 500 handler
            # sits outside user middleware).
            logger.error("unhandled error on %s %s", record.method, record.path, exc_info=exc)
            if record.status:
                raise  # the response had started: the server closes the connection
            await send_error(send_with_id, from_exception(exc), self._shapes, path)
        finally:
            if path not in UNMETERED_PATHS:
                if path.startswith("/v1/"):
                    self._metrics.observe_request(record, _endpoint(path))
                logger.info("request %s", json.dumps(record.log_fields()))

    @staticmethod
    def _limited(receive: Receive, limit: int) -> Receive:
        """A body larger than the limit without a Content-Length is cut off as it streams in."""
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLargeError(limit)
            return message

        return receive_limited


def bounded(text: str, limit: int) -> str:
    """At most `limit` characters of client text, saying how much was cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more)"


def _declared_length(headers: dict[str, str]) -> int:
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0


def _endpoint(path: str) -> str:
    # Paths are client input: only known routes become label values.
    for collection in ("/v1/models/", "/v1/files/", "/v1/batches/"):
        if path.startswith(collection):
            return collection + "{id}"
    return path if path in METERED_ENDPOINTS else "other"


async def send_error(send: Send, error: APIError, shapes: ErrorShapes | None = None, path: str = "") -> None:
    payload = error.body().model_dump(mode="json") if shapes is None else shapes.body(path, error)
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
