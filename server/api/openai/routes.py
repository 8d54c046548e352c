"""Thin HTTP handlers for the OpenAI routes and llama.cpp's extensions: parse the body, run the use case, send JSON
or an SSE stream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from server.api.openai import endpoints, responses_stream
from server.api.openai import responses as responses_api
from server.api.openai.embeddings import EmbeddingRequest, embedding_list, embedding_plan
from server.api.openai.models import model_card, model_list
from server.api.openai.plans import off_loop
from server.api.openai.responses import ResponsesRequest
from server.api.openai.schemas import ChatCompletionRequest, CompletionRequest
from server.generation.reply import finished
from server.http import sse
from server.http.deps import EmbedderDep, PipelineDep, RecordDep, json_body, request_body_doc, require_api_key
from server.http.disconnect import ClientLeft, unless_disconnected
from server.metrics import RequestRecord

logger = logging.getLogger(__name__)

v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


def _json(obj: BaseModel) -> JSONResponse:
    return JSONResponse(obj.model_dump(mode="json"))


def _events(
    request: Request, record: RequestRecord, encoder: Callable[..., AsyncIterator[bytes]], source: Any
) -> Response:
    """An SSE response: ended with an error event at shutdown, ended and counted if its client stops reading."""
    return sse.event_stream(request, record, lambda notice, slow_client: encoder(source, notice, slow_client))


async def _unless_disconnected(
    request: Request, work: Awaitable[Any], render: Callable[[Any], Response] = lambda obj: _json(obj)
) -> Response:
    """Run a non-streaming request, cancelling it (and freeing its sequence) if the client goes away."""
    try:
        return render(await unless_disconnected(request, work))
    except ClientLeft as left:
        return left.response()


ChatBody = Annotated[ChatCompletionRequest, Depends(json_body(ChatCompletionRequest))]
CompletionBody = Annotated[CompletionRequest, Depends(json_body(CompletionRequest))]
ResponsesBody = Annotated[ResponsesRequest, Depends(json_body(ResponsesRequest))]
EmbeddingBody = Annotated[EmbeddingRequest, Depends(json_body(EmbeddingRequest))]


@v1.get("/models")
async def list_models(request: Request) -> JSONResponse:
    return _json(await model_list(request.app.state.registry, request.app.state.created))


@v1.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> JSONResponse:
    return _json(await model_card(request.app.state.registry, model_id, request.app.state.created))


@v1.post("/chat/completions", response_model=None, openapi_extra=request_body_doc(ChatCompletionRequest))
async def chat_completions(request: Request, body: ChatBody, pipeline: PipelineDep, record: RecordDep) -> Response:
    if body.stream:
        return _events(request, record, sse.encode, await endpoints.chat_stream(pipeline, body, record))
    return await _unless_disconnected(request, endpoints.chat(pipeline, body, record))


@v1.post("/completions", response_model=None, openapi_extra=request_body_doc(CompletionRequest))
async def completions(request: Request, body: CompletionBody, pipeline: PipelineDep, record: RecordDep) -> Response:
    if body.stream:
        return _events(request, record, sse.encode, await endpoints.complete_stream(pipeline, body, record))
    return await _unless_disconnected(request, endpoints.complete(pipeline, body, record))


@v1.post("/responses", response_model=None, openapi_extra=request_body_doc(ResponsesRequest))
async def create_response(request: Request, body: ResponsesBody, pipeline: PipelineDep, record: RecordDep) -> Response:
    plan = await off_loop(responses_api.to_plan, body)
    if body.stream:
        events = responses_stream.events(body, await pipeline.start(plan, record))
        return _events(request, record, sse.encode_events, events)

    async def respond() -> dict:
        generation = await pipeline.start(plan, record)
        (choice,) = await finished(generation.events, generation.choices)
        return responses_api.from_finished(body, choice, generation.prompt_tokens)

    return await _unless_disconnected(request, respond(), JSONResponse)


@v1.post("/embeddings", response_model=None, openapi_extra=request_body_doc(EmbeddingRequest))
async def embeddings(request: Request, body: EmbeddingBody, embedder: EmbedderDep, record: RecordDep) -> Response:
    async def embed() -> BaseModel:
        return embedding_list(body, await embedder.embed(embedding_plan(body), record))

    return await _unless_disconnected(request, embed())
