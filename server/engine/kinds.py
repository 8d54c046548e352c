"""The kinds of model a models.yaml entry can be, and the one 400 for a request sent to the wrong kind.

The entry's flags decide the kind (the worker loads the engine they name), so a request for the wrong kind is
refused from the entry before any model loads; engines refuse it too, in the same words."""

from __future__ import annotations

from typing import Literal

from server.config import ModelSpec
from server.engine.base import EngineInfo
from server.errors import InvalidRequestError

Kind = Literal["generative", "embedding", "reranker"]

_NOUNS: dict[Kind, str] = {
    "generative": "a generative model",
    "embedding": "an embedding model",
    "reranker": "a reranker",
}
_ENDPOINTS: dict[Kind, str] = {
    "generative": "/v1/chat/completions",
    "embedding": "/v1/embeddings",
    "reranker": "/v1/rerank",
}
_FLAGS: dict[Kind, str] = {
    "embedding": " (`embedding: true` in models.yaml)",
    "reranker": " (`reranker: true` in models.yaml)",
}


def spec_kind(spec: ModelSpec) -> Kind:
    return "reranker" if spec.reranker else "embedding" if spec.embedding else "generative"


def info_kind(info: EngineInfo) -> Kind:
    return "reranker" if info.reranker else "embedding" if info.embedding_dims is not None else "generative"


def wrong_kind(name: str, kind: Kind, wanted: Kind) -> InvalidRequestError:
    """`The model `x` is a reranker, not a generative model; use /v1/rerank.`"""
    return InvalidRequestError(
        f"The model `{name}` is {_NOUNS[kind]}, not {_NOUNS[wanted]}{_FLAGS.get(wanted, '')}; use {_ENDPOINTS[kind]}.",
        param="model",
    )


def require_kind(name: str, kind: Kind, wanted: Kind) -> None:
    if kind != wanted:
        raise wrong_kind(name, kind, wanted)
