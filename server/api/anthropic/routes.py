"""HTTP handlers of Anthropic's Messages API: `POST /v1/messages` (whole or streamed) and
`POST /v1/messages/count_tokens`.

Every failure on these routes leaves in Anthropic's error shape, so each handler catches its own: before the
first byte as a JSON error with its status, after it as an `error` event. The pipeline lives on
`request.app.state.pipeline`; the request's record (metrics, log line) on `request.state.record`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response

from server.api.anthropic import sse
from server.api.anthropic.adapter import to_plan
from server.api.anthropic.assembly import MessageStream, build_message, new_message_id
from server.api.anthropic.errors import error_body
from server.api.anthropic.schemas import CountTokensRequest, MessagesRequest, TokenCount
from server.errors import InternalError, from_exception, from_validation_errors
from server.generation.reply import finished
from server.http.disconnect import ClientLeft, unless_disconnected
from server.http.sse import ShutdownNotice, event_stream, until_shutdown

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
        stream = MessageStream(
            message_id=message_id,
            model=body.model,
            input_tokens=generation.prompt_tokens,
            show_thinking=_shows_thinking(body),
        )

        def body(shutdown: ShutdownNotice, _on_slow_client: Callable[[], None]) -> AsyncIterator[bytes]:
            events = sse.message_events(until_shutdown(generation.events, shutdown), stream)
            return sse.encode(events, record.request_id)

        # Closing the reply events however the response ends cancels the generation, also when the client left
        # before the first event.
        return event_stream(request, record, body, closing=generation.events)

    async def answer() -> Response:
        (choice,) = await finished(generation.events, 1)
        message = build_message(
            choice,
            message_id=message_id,
            model=body.model,
            input_tokens=generation.prompt_tokens,
            show_thinking=_shows_thinking(body),
        )
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


def _shows_thinking(body: MessagesRequest) -> bool:
    """`thinking.display` "omitted": the thinking blocks are sent empty."""
    return getattr(body.thinking, "display", None) != "omitted"


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
