"""The cluster's front door without Ray: read a request's body within the server's limits, find the model it names,
forward it to a replica and pass the answer through as it comes (SSE unbuffered). A replica lost before it answered
is a clean 503; one lost mid-stream ends the stream with an error event (and `[DONE]` where the protocol has one)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from server.api.anthropic.errors import error_body as anthropic_error_body
from server.cluster.bridge import RequestHead, ResponseHead
from server.config import ModelSpec
from server.errors import APIError, PayloadTooLargeError
from server.http.error_shapes import ErrorShapes
from server.http.sse import DONE, event

logger = logging.getLogger(__name__)

Forward = Callable[[RequestHead, bytes, str | None], AsyncIterator[ResponseHead | bytes]]
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te", b"trailer"})


class ReplicaLostError(APIError):
    """The replica serving the request went away (its process died, or it was stopped) before it answered."""

    status_code = 503
    error_type = "server_error"
    code = "replica_lost"
    retry_after = 1

    def __init__(self) -> None:
        super().__init__("The server replica handling this request stopped unexpectedly; retry it.")


class NotInClusterError(APIError):
    """Files and batches live in the server that received them (its data directory): through the cluster a later
    request could reach another replica, which would not know them. Refused rather than found at random."""

    status_code = 501
    error_type = "invalid_request_error"
    code = "not_supported_in_cluster"

    def __init__(self) -> None:
        super().__init__(
            "The Files and Batch APIs are not available through the Ray Serve application: files and batches live "
            "on one server. Use a single server (`slm-server serve`) for them."
        )


SINGLE_SERVER_PATHS = ("/v1/files", "/v1/batches")


class ModelRouter:
    """Which configured model a request body names: its canonical name (aliases resolved, so that both reach the
    replica that has it loaded), or None for anything else (not JSON, no `model`, not a string, an unknown name).
    A None request goes to any replica, whose app answers it exactly as the single server does (the 400s and 404s
    are its own)."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._names = {name: spec.name for spec in specs for name in (spec.name, *spec.aliases)}

    def model_of(self, body: bytes) -> str | None:
        if not body.lstrip().startswith(b"{"):
            return None
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return None
        model = document.get("model") if isinstance(document, dict) else None
        return self._names.get(model) if isinstance(model, str) else None


def error_shapes() -> ErrorShapes:
    shapes = ErrorShapes()
    shapes.register("/v1/messages", anthropic_error_body)  # as create_app registers it
    return shapes


class IngressCore:
    def __init__(
        self,
        router: ModelRouter,
        forward: Forward,
        *,
        max_body_bytes: int,
        body_limits: Mapping[str, int] | None = None,
        shapes: ErrorShapes | None = None,
        proxy_headers: Iterable[bytes] = (),
    ) -> None:
        self._router = router
        self._forward = forward
        self._max_body = max_body_bytes
        self._body_limits = dict(body_limits or {})
        self._shapes = shapes or error_shapes()
        # Response headers the proxy in front sets itself (Ray's: x-request-id): the replica's would repeat them.
        self._dropped = HOP_BY_HOP | {name.lower() for name in proxy_headers}

    def error_response(self, path: str, error: APIError) -> Response:
        return JSONResponse(self._shapes.body(path, error), status_code=error.status_code, headers=error.headers())

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        if any(path == prefix or path.startswith(prefix + "/") for prefix in SINGLE_SERVER_PATHS):
            return self.error_response(path, NotInClusterError())
        limit = self._body_limits.get(path, self._max_body)
        try:
            body = await read_body(request, limit)
        except PayloadTooLargeError as exc:
            return self.error_response(path, exc)
        except ClientDisconnect:
            return Response(status_code=499)
        head = RequestHead(
            method=request.method,
            path=path,
            query_string=request.scope.get("query_string", b""),
            headers=list(request.scope.get("headers", [])),
            client=tuple(request.client) if request.client else None,  # type: ignore[arg-type]
            scheme=request.url.scheme,
        )
        answer = self._forward(head, body, self._router.model_of(body))
        try:
            first = await anext(answer)
        except Exception:
            logger.exception("no answer from a replica for %s %s", request.method, path)
            await _close(answer)
            return self.error_response(path, ReplicaLostError())
        if not isinstance(first, ResponseHead):
            await _close(answer)
            return self.error_response(path, ReplicaLostError())
        headers = [(k, v) for k, v in first.headers if k.lower() not in self._dropped]
        content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        response = StreamingResponse(self._rest(answer, path, content_type), status_code=first.status)
        response.raw_headers = headers
        return response

    async def _rest(self, answer: AsyncIterator[ResponseHead | bytes], path: str, content_type: bytes) -> Any:
        try:
            async for chunk in answer:
                if isinstance(chunk, bytes):
                    yield chunk
        except Exception:
            logger.exception("the replica serving %s was lost mid-response", path)
            if not content_type.startswith(b"text/event-stream"):
                raise  # a whole body cut short: the connection closes, the client sees it incomplete
            yield stream_error(path, ReplicaLostError())
        finally:
            await _close(answer)


def stream_error(path: str, error: APIError) -> bytes:
    """The mid-stream failure event, in the protocol's own form (as server/http/sse.py and the adapters end a
    stream that failed)."""
    if path.startswith("/v1/messages"):
        data = json.dumps(anthropic_error_body(error), separators=(",", ":"))
        return f"event: error\ndata: {data}\n\n".encode()
    if path.startswith("/v1/responses"):
        detail = error.body().error
        payload = {"type": "error", "code": detail.code, "message": detail.message, "param": detail.param}
        return f"event: error\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
    return event(error.body().model_dump(mode="json")) + DONE


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as its declared or received length passes the limit."""
    try:
        declared = int(request.headers.get("content-length", "0"))
    except ValueError:
        declared = 0
    if declared > limit:
        raise PayloadTooLargeError(limit)
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise PayloadTooLargeError(limit)
        parts.append(part)
    return b"".join(parts)


async def _close(answer: AsyncIterator[Any]) -> None:
    close = getattr(answer, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:
            logger.debug("closing a replica's answer failed", exc_info=True)
