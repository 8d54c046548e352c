"""`/v1/embeddings`: wire types, and the request as an embedding plan; vectors back as OpenAI's list."""

from __future__ import annotations

import base64
import math
import struct
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from server.api.openai.schemas import OpenAIRequest
from server.generation.embedding import Embedded, EmbeddingPlan

TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=2**31 - 1)]], Field(min_length=1)]  # llama.cpp's int32
Text = Annotated[str, Field(min_length=1)]


class EmbeddingRequest(OpenAIRequest):
    """How many inputs one request may hold is the operator's `max_embedding_inputs`, checked by the embedder."""

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


def embedding_plan(body: EmbeddingRequest) -> EmbeddingPlan:
    single = isinstance(body.input, str) or isinstance(body.input[0], int)
    items = [body.input] if single else list(body.input)
    return EmbeddingPlan(model=body.model, inputs=items, dimensions=body.dimensions)  # type: ignore[arg-type]


def embedding_list(body: EmbeddingRequest, embedded: Embedded) -> EmbeddingList:
    data = [Embedding(index=i, embedding=_encode(v, body)) for i, v in enumerate(embedded.vectors)]
    usage = EmbeddingUsage(prompt_tokens=embedded.tokens, total_tokens=embedded.tokens)
    return EmbeddingList(data=data, model=body.model, usage=usage)


def _encode(vector: list[float], body: EmbeddingRequest) -> list[float] | str:
    if body.dimensions is not None and body.dimensions < len(vector):  # truncate, then renormalise
        vector = vector[: body.dimensions]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        vector = [v / norm for v in vector]
    if body.encoding_format == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
