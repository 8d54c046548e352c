"""Thin HTTP handlers for the OpenAI routes: take the body, call the service, send JSON or an SSE stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from server import responses as responses_api
from server import sse
from server.deps import (
    ChatBody,
    CompletionBody,
    EmbeddingBody,
    RecordDep,
    ResponsesBody,
    ServiceDep,
    request_body_doc,
    require_api_key,
)
from server.embeddings import EmbeddingRequest
from server.metrics import RequestRecord
from server.responses import ResponsesRequest
from server.schemas import ChatCompletionRequest, CompletionRequest, StreamOptions

logger = logging.getLogger(__name__)

# nginx's code for "client closed the request"; nobody receives it, but the access log tells what happened.
CLIENT_CLOSED_REQUEST = 499

v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
# llama.cpp server extensions under the paths its users know, behind the same API keys.
extensions = APIRouter(dependencies=[Depends(require_api_key)])


def _json(obj: BaseModel) -> JSONResponse:
    return JSONResponse(obj.model_dump(mode="json"))


def _events(
    request: Request, record: RequestRecord, encoder: Callable[..., AsyncIterator[bytes]], source: Any
) -> Response:
    """An SSE response: ended with an error event at shutdown, ended and counted if its client stops reading."""
    state = request.app.state
    slow_client = partial(state.metrics.observe_client_timeout, record)
    return sse.EventStreamResponse(
        encoder(source, state.shutdown_notice, slow_client),
        send_timeout_s=state.settings.stream_send_timeout_s,
        on_client_timeout=slow_client,
    )


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(
    request: Request, work: Awaitable[Any], render: Callable[[Any], Response] = lambda obj: _json(obj)
) -> Response:
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
    return render(task.result())


@v1.get("/models")
async def list_models(service: ServiceDep) -> JSONResponse:
    return _json(service.list_models())


@v1.get("/models/{model_id:path}")
async def get_model(model_id: str, service: ServiceDep) -> JSONResponse:
    return _json(service.get_model(model_id))


@v1.post("/chat/completions", response_model=None, openapi_extra=request_body_doc(ChatCompletionRequest))
async def chat_completions(request: Request, body: ChatBody, service: ServiceDep, record: RecordDep) -> Response:
    if body.stream:
        return _events(request, record, sse.encode, await service.chat_stream(body, record))
    return await _unless_disconnected(request, service.chat(body, record))


@extensions.post("/apply-template", response_model=None, openapi_extra=request_body_doc(ChatCompletionRequest))
async def apply_template(body: ChatBody, service: ServiceDep, record: RecordDep) -> Response:
    """The prompt a chat request becomes with the model's chat template (as llama.cpp's server answers)."""
    return JSONResponse({"prompt": await service.render_prompt(body, record)})


@v1.post("/completions", response_model=None, openapi_extra=request_body_doc(CompletionRequest))
async def completions(request: Request, body: CompletionBody, service: ServiceDep, record: RecordDep) -> Response:
    if body.stream:
        return _events(request, record, sse.encode, await service.complete_stream(body, record))
    return await _unless_disconnected(request, service.complete(body, record))


@v1.post("/responses", response_model=None, openapi_extra=request_body_doc(ResponsesRequest))
async def create_response(request: Request, body: ResponsesBody, service: ServiceDep, record: RecordDep) -> Response:
    chat = responses_api.to_chat(body)
    if body.stream:
        chat = chat.model_copy(update={"stream": True, "stream_options": StreamOptions(include_usage=True)})
        events = responses_api.events(body, await service.chat_stream(chat, record))
        return _events(request, record, sse.encode_events, events)

    async def respond() -> dict:
        return responses_api.from_chat(body, await service.chat(chat, record))

    return await _unless_disconnected(request, respond(), JSONResponse)


@v1.post("/embeddings", response_model=None, openapi_extra=request_body_doc(EmbeddingRequest))
async def embeddings(request: Request, body: EmbeddingBody, service: ServiceDep, record: RecordDep) -> Response:
    return await _unless_disconnected(request, service.embeddings(body, record))
