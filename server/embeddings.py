"""`/v1/embeddings`: wire types and the use case (validation, tokenizing, dimensions, encoding)."""

from __future__ import annotations

import base64
import math
import struct
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from server.errors import ContextLengthExceededError, InvalidRequestError
from server.metrics import RequestRecord
from server.registry import ModelRegistry
from server.schemas import OpenAIRequest

TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class EmbeddingRequest(OpenAIRequest):
    model: str = Field(min_length=1)
    input: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
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
    registry: ModelRegistry, body: EmbeddingRequest, record: RequestRecord, max_inputs: int
) -> EmbeddingList:
    items = [body.input] if isinstance(body.input, str) or isinstance(body.input[0], int) else list(body.input)
    if len(items) > max_inputs:
        raise InvalidRequestError(
            f"Too many inputs: {len(items)}; this server embeds at most {max_inputs} per request.", param="input"
        )
    record.model = registry.resolve(body.model).name
    async with registry.use(body.model) as engine:
        dims = engine.info.embedding_dims
        if dims is None:
            raise InvalidRequestError(f"The model `{body.model}` is not an embedding model.", param="model")
        if body.dimensions is not None and body.dimensions > dims:
            raise InvalidRequestError(
                f"Invalid value for 'dimensions': the model's vectors have {dims} (got {body.dimensions}).",
                param="dimensions",
            )
        token_lists = []
        for item in items:
            tokens = await engine.tokenize(item) if isinstance(item, str) else list(item)
            if not item or not tokens:
                raise InvalidRequestError("An input is empty.", param="input")
            if len(tokens) > engine.info.n_ctx:
                raise ContextLengthExceededError(
                    f"This model's maximum input length is {engine.info.n_ctx} tokens; an input has {len(tokens)}.",
                    param="input",
                )
            if max(tokens) >= engine.info.n_vocab:
                raise InvalidRequestError("An input holds a token id the model does not have.", param="input")
            token_lists.append(tokens)
        vectors = await engine.embed(token_lists)
    used = sum(map(len, token_lists))
    record.prompt_tokens = used
    data = [Embedding(index=i, embedding=_encode(v, body)) for i, v in enumerate(vectors)]
    return EmbeddingList(data=data, model=body.model, usage=EmbeddingUsage(prompt_tokens=used, total_tokens=used))


def _encode(vector: list[float], body: EmbeddingRequest) -> list[float] | str:
    if body.dimensions is not None and body.dimensions < len(vector):  # truncate, then renormalise
        vector = vector[: body.dimensions]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        vector = [v / norm for v in vector]
    if body.encoding_format == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
