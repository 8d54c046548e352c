"""HTTP handlers of Anthropic's Messages API: `POST /v1/messages` (whole or streamed) and
`POST /v1/messages/count_tokens`.

Every failure on these routes leaves in Anthropic's error shape, so each handler catches its own: before the
first byte as a JSON error with its status, after it as an `error` event. The pipeline lives on
`request.app.state.pipeline`; the request's record (metrics, log line) on `request.state.record`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from server.api.anthropic import sse
from server.api.anthropic.adapter import to_plan
from server.api.anthropic.assembly import MessageStream, build_message, new_message_id
from server.api.anthropic.errors import error_body
from server.api.anthropic.schemas import CountTokensRequest, MessagesRequest, TokenCount
from server.errors import InternalError, from_exception, from_validation_errors
from server.generation.reply import ReplyEvent, finished
from server.http.disconnect import ClientLeft, unless_disconnected
from server.http.sse import EventStreamResponse, until_shutdown

logger = logging.getLogger(__name__)

BodyT = TypeVar("BodyT", bound=BaseModel)

router = APIRouter()


@router.post("/v1/messages", response_model=None)
async def create_message(request: Request) -> Response:
    record = request.state.record
    try:
        body = await _parsed(request, MessagesRequest)
        generation = await request.app.state.pipeline.start(to_plan(body), record)
    except Exception as exc:
        return _error_response(exc, record.request_id)
    message_id = new_message_id()
    if body.stream:
        stream = MessageStream(message_id=message_id, model=body.model, input_tokens=generation.prompt_tokens)
        state = request.app.state
        replies = until_shutdown(generation.events, state.shutdown_notice)
        events = sse.message_events(replies, stream)
        return EventStream(
            sse.encode(events, record.request_id),
            generation.events,
            send_timeout_s=state.settings.stream_send_timeout_s,
            on_client_timeout=partial(state.metrics.observe_client_timeout, record),
        )

    async def answer() -> Response:
        (choice,) = await finished(generation.events, 1)
        message = build_message(choice, message_id=message_id, model=body.model, input_tokens=generation.prompt_tokens)
        return JSONResponse(message.model_dump(mode="json"))

    return await _unless_disconnected(request, answer(), record.request_id)


@router.post("/v1/messages/count_tokens", response_model=None)
async def count_tokens(request: Request) -> Response:
    record = request.state.record
    try:
        body = await _parsed(request, CountTokensRequest)
        tokens = await request.app.state.pipeline.count_tokens(to_plan(body), record)
    except Exception as exc:
        return _error_response(exc, record.request_id)
    return JSONResponse(TokenCount(input_tokens=tokens).model_dump(mode="json"))


class EventStream(EventStreamResponse):
    """Anthropic's event stream, with the send timeout of every stream here (a client that stops reading is cut
    and counted). However the response ends, the reply events are closed, which cancels the generation: also
    when the client leaves before the first event, when Starlette never starts the body."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        replies: AsyncIterator[ReplyEvent],
        *,
        send_timeout_s: float,
        on_client_timeout: Callable[[], None],
    ) -> None:
        super().__init__(body, send_timeout_s=send_timeout_s, on_client_timeout=on_client_timeout)
        self._replies = replies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._replies, "aclose", None)
            if aclose is not None:
                await aclose()


async def _parsed(request: Request, model: type[BodyT]) -> BodyT:
    """The body as JSON whatever the Content-Type says (`curl -d` sends a form type)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise from_validation_errors(exc.errors()) from None


def _error_response(exc: Exception, request_id: str | None) -> JSONResponse:
    error = from_exception(exc)
    if isinstance(error, InternalError):
        logger.error("request failed", exc_info=exc)
    return JSONResponse(error_body(error, request_id), status_code=error.status_code, headers=error.headers())


async def _unless_disconnected(request: Request, work: Awaitable[Response], request_id: str | None) -> Response:
    """Run a whole (not streamed) answer, cancelling it, and with it the generation, if the client goes away."""
    try:
        return await unless_disconnected(request, work)
    except ClientLeft as left:
        return left.response()
    except Exception as exc:
        return _error_response(exc, request_id)
