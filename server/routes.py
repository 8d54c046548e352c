"""Thin HTTP handlers: take the body, call the service, send JSON or an SSE stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from server import sse
from server.errors import from_validation_errors
from server.schemas import ChatCompletionRequest, CompletionRequest
from server.service import InferenceService

logger = logging.getLogger(__name__)


def get_service(request: Request) -> InferenceService:
    return request.app.state.service


BodyT = TypeVar("BodyT", bound=BaseModel)


def json_body(model: type[BodyT]) -> Callable[[Request], Awaitable[BodyT]]:
    """Parse the body as JSON whatever the Content-Type says (`curl -d` sends a form type), like OpenAI."""

    async def parse(request: Request) -> BodyT:
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as exc:
            raise from_validation_errors(exc.errors()) from None

    return parse


ServiceDep = Annotated[InferenceService, Depends(get_service)]
ChatBody = Annotated[ChatCompletionRequest, Depends(json_body(ChatCompletionRequest))]
CompletionBody = Annotated[CompletionRequest, Depends(json_body(CompletionRequest))]

v1 = APIRouter(prefix="/v1")
health = APIRouter()


def _json(obj: BaseModel) -> JSONResponse:
    return JSONResponse(obj.model_dump(mode="json"))


# nginx's code for "client closed the request"; nobody receives it, but the access log tells what happened.
CLIENT_CLOSED_REQUEST = 499


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[BaseModel]) -> Response:
    """Run a non-streaming request, cancelling it (and freeing its sequence) if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        logger.info("client disconnected; request cancelled")
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return _json(task.result())


def _events(chunks) -> StreamingResponse:  # type: ignore[no-untyped-def]
    return StreamingResponse(sse.encode(chunks), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@v1.get("/models")
async def list_models(service: ServiceDep) -> JSONResponse:
    return _json(service.list_models())


@v1.get("/models/{model_id:path}")
async def get_model(model_id: str, service: ServiceDep) -> JSONResponse:
    return _json(service.get_model(model_id))


@v1.post("/chat/completions", response_model=None)
async def chat_completions(request: Request, body: ChatBody, service: ServiceDep) -> Response:
    if body.stream:
        return _events(await service.chat_stream(body))
    return await _unless_disconnected(request, service.chat(body))


@v1.post("/completions", response_model=None)
async def completions(request: Request, body: CompletionBody, service: ServiceDep) -> Response:
    if body.stream:
        return _events(await service.complete_stream(body))
    return await _unless_disconnected(request, service.complete(body))


@health.get("/health")
async def get_health() -> dict[str, str]:
    return {"status": "ok"}
