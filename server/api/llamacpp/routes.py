"""llama.cpp server's own endpoints: `/tokenize`, `/detokenize` and `/apply-template`, with its field names and
answers, so tools written for llama-server work. `model` is ours (llama-server serves one model): it defaults
to the first model of models.yaml."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from server.api.openai.plans import chat_plan, off_loop
from server.api.openai.schemas import ChatCompletionRequest
from server.errors import InvalidRequestError
from server.http.deps import PipelineDep, RecordDep, json_body, request_body_doc, require_api_key
from server.metrics import RequestRecord
from server.models.registry import ModelRegistry

MAX_CONTENT_CHARS = 1_000_000  # text to tokenize (the request body limit applies as well)
MAX_TOKENS = 100_000  # token ids to turn back into text

extensions = APIRouter(dependencies=[Depends(require_api_key)])


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    content: str = Field(max_length=MAX_CONTENT_CHARS)
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False
    model: Annotated[str, Field(min_length=1)] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    tokens: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(max_length=MAX_TOKENS)
    model: Annotated[str, Field(min_length=1)] | None = None


TokenizeBody = Annotated[TokenizeRequest, Depends(json_body(TokenizeRequest))]
DetokenizeBody = Annotated[DetokenizeRequest, Depends(json_body(DetokenizeRequest))]
ChatBody = Annotated[ChatCompletionRequest, Depends(json_body(ChatCompletionRequest))]


@extensions.post("/tokenize", openapi_extra=request_body_doc(TokenizeRequest))
async def tokenize(request: Request, body: TokenizeBody, record: RecordDep) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    async with registry.use(_model(registry, body.model, record)) as engine:
        tokens = await engine.tokenize(body.content, add_special=body.add_special, parse_special=body.parse_special)
        if not body.with_pieces:
            return JSONResponse({"tokens": tokens})
        pieces = await engine.detokenize(tokens)
    return JSONResponse({"tokens": [{"id": t, "piece": _piece(p)} for t, p in zip(tokens, pieces, strict=True)]})


@extensions.post("/detokenize", openapi_extra=request_body_doc(DetokenizeRequest))
async def detokenize(request: Request, body: DetokenizeBody, record: RecordDep) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    async with registry.use(_model(registry, body.model, record)) as engine:
        if body.tokens and max(body.tokens) >= engine.info.n_vocab:
            raise InvalidRequestError(
                f"A token id is not one of this model's (0 to {engine.info.n_vocab - 1}).", param="tokens"
            )
        pieces = await engine.detokenize(body.tokens)
    return JSONResponse({"content": b"".join(pieces).decode("utf-8", errors="replace")})


@extensions.post("/apply-template", response_model=None, openapi_extra=request_body_doc(ChatCompletionRequest))
async def apply_template(body: ChatBody, pipeline: PipelineDep, record: RecordDep) -> JSONResponse:
    """The prompt a chat request becomes with the model's chat template, tools included."""
    return JSONResponse({"prompt": await pipeline.render(await off_loop(chat_plan, body), record)})


def _model(registry: ModelRegistry, name: str | None, record: RequestRecord) -> str:
    name = name or registry.specs()[0].name
    record.model = registry.resolve(name).name
    return name


def _piece(piece: bytes) -> str | list[int]:
    """As llama-server answers: the text, or the bytes when the piece is not whole UTF-8 on its own."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)
