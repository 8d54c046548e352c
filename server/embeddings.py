"""`/v1/embeddings`: wire types and the use case (validation, tokenizing, dimensions, encoding)."""

from __future__ import annotations

import base64
import contextlib
import math
import struct
from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from server.config import ModelSpec
from server.engine import Engine, EngineInfo
from server.errors import ContextLengthExceededError, InvalidRequestError, OverloadedError
from server.metrics import RequestRecord
from server.params import RequestLimits
from server.registry import ModelRegistry
from server.schemas import OpenAIRequest

TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=2**31 - 1)]], Field(min_length=1)]  # llama.cpp's int32
Text = Annotated[str, Field(min_length=1)]


class EmbeddingRequest(OpenAIRequest):
    """How many inputs one request may hold is the operator's `max_embedding_inputs`, checked by `embed`."""

    model: str = Field(min_length=1)
    input: Text | Annotated[list[Text], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


async def embed(
    registry: ModelRegistry,
    body: EmbeddingRequest,
    record: RequestRecord,
    limits: RequestLimits,
    admission: EmbeddingAdmission,
) -> EmbeddingList:
    items = [body.input] if isinstance(body.input, str) or isinstance(body.input[0], int) else list(body.input)
    if len(items) > limits.max_embedding_inputs:
        raise InvalidRequestError(
            f"Too many inputs: {len(items)}; this server embeds at most {limits.max_embedding_inputs} per request.",
            param="input",
        )
    spec = registry.resolve(body.model)
    record.model = spec.name
    _check_total(sum(len(item) for item in items if not isinstance(item, str)), limits)  # before any model loads
    with admission.admit(spec):
        async with registry.use(body.model) as engine:
            _check_model(engine.info, body)
            token_lists = await _token_lists(engine, items, limits)
            vectors = await engine.embed(token_lists)
    used = sum(map(len, token_lists))
    record.prompt_tokens = used
    data = [Embedding(index=i, embedding=_encode(v, body)) for i, v in enumerate(vectors)]
    return EmbeddingList(data=data, model=body.model, usage=EmbeddingUsage(prompt_tokens=used, total_tokens=used))


def _check_model(info: EngineInfo, body: EmbeddingRequest) -> None:
    if info.embedding_dims is None:
        raise InvalidRequestError(f"The model `{body.model}` is not an embedding model.", param="model")
    if body.dimensions is not None and body.dimensions > info.embedding_dims:
        raise InvalidRequestError(
            f"Invalid value for 'dimensions': the model's vectors have {info.embedding_dims} (got {body.dimensions}).",
            param="dimensions",
        )


async def _token_lists(engine: Engine, items: list[str | list[int]], limits: RequestLimits) -> list[list[int]]:
    """Each input's tokens, checked against the model (context, vocabulary) and the request's token cap."""
    info = engine.info
    token_lists: list[list[int]] = []
    total = 0
    for item in items:
        tokens = await engine.tokenize(item) if isinstance(item, str) else list(item)
        if not item or not tokens:
            raise InvalidRequestError("An input is empty.", param="input")
        if len(tokens) > info.n_ctx:
            raise ContextLengthExceededError(
                f"This model's maximum input length is {info.n_ctx} tokens; an input has {len(tokens)}.",
                param="input",
            )
        if max(tokens) >= info.n_vocab:
            raise InvalidRequestError("An input holds a token id the model does not have.", param="input")
        total += len(tokens)
        _check_total(total, limits)
        token_lists.append(tokens)
    return token_lists


def _check_total(tokens: int, limits: RequestLimits) -> None:
    if tokens > limits.max_embedding_tokens:
        raise InvalidRequestError(
            f"The inputs hold more than {limits.max_embedding_tokens} tokens; this server embeds at most "
            f"{limits.max_embedding_tokens} tokens per request.",
            param="input",
        )


class EmbeddingAdmission:
    """Embedding requests in progress per model. Beyond the model's `parallel + max_queue` (the bound its
    generation requests have), more are refused with a 429 rather than queued without end."""

    def __init__(self) -> None:
        self._running: dict[str, int] = {}

    @contextlib.contextmanager
    def admit(self, spec: ModelSpec) -> Iterator[None]:
        running = self._running.get(spec.name, 0)
        if running >= spec.parallel + spec.max_queue:
            raise OverloadedError("The model is overloaded; retry shortly.", retry_after=1)
        self._running[spec.name] = running + 1
        try:
            yield
        finally:
            self._running[spec.name] -= 1
            if not self._running[spec.name]:
                del self._running[spec.name]


def _encode(vector: list[float], body: EmbeddingRequest) -> list[float] | str:
    if body.dimensions is not None and body.dimensions < len(vector):  # truncate, then renormalise
        vector = vector[: body.dimensions]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        vector = [v / norm for v in vector]
    if body.encoding_format == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
