"""FastAPI dependencies shared by the routers: the pipeline, the request record, parsed bodies, API keys.

Every dependency is `async def`, though none awaits: FastAPI runs a plain `def` dependency in its thread pool, a
thread hop (and a wakeup of another thread) per dependency per request."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from server.errors import AuthenticationError, from_validation_errors
from server.generation.embedding import Embedder
from server.generation.pipeline import GenerationPipeline
from server.metrics import RequestRecord

BodyT = TypeVar("BodyT", bound=BaseModel)


async def get_pipeline(request: Request) -> GenerationPipeline:
    return request.app.state.pipeline


async def get_embedder(request: Request) -> Embedder:
    return request.app.state.embedder


async def get_record(request: Request) -> RequestRecord:
    return request.state.record


def request_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody of a route whose body `json_body` parses (FastAPI cannot see it there)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any, expanding: frozenset[str]) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                name = node["$ref"].rsplit("/", 1)[-1]
                if name in expanding:  # a recursive type: below its first level, any value is described
                    return {}
                return inline(definitions[name], expanding | {name})
            return {key: inline(value, expanding) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item, expanding) for item in node]
        return node

    body = inline(schema, frozenset())
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}


def json_body(model: type[BodyT]) -> Callable[[Request], Awaitable[BodyT]]:
    """Parse the body as JSON whatever the Content-Type says (`curl -d` sends a form type), like OpenAI."""

    async def parse(request: Request) -> BodyT:
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as exc:
            raise from_validation_errors(exc.errors()) from None

    return parse


class APIKeyCheck:
    """Bearer-token check against the configured keys, in constant time; no keys configured means open."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        # Digests have one length, so comparing them reveals nothing about a key's length either.
        self._digests = tuple(hashlib.sha256(key.encode()).digest() for key in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __call__(self, authorization: str | None) -> None:
        if not self._digests:
            return
        scheme, _, token = (authorization or "").partition(" ")
        presented = hashlib.sha256(token.strip().encode()).digest()
        matched = False
        for digest in self._digests:  # no early exit: the time taken does not depend on which key matched
            matched |= secrets.compare_digest(presented, digest)
        if not authorization:
            raise AuthenticationError(
                "You didn't provide an API key. Send it in the Authorization header: 'Bearer YOUR_KEY'."
            )
        if scheme.lower() != "bearer" or not matched:
            raise AuthenticationError()


async def require_api_key(request: Request) -> None:
    """`Authorization: Bearer KEY`, or Anthropic clients' `x-api-key: KEY`."""
    authorization = request.headers.get("authorization")
    if authorization is None and (key := request.headers.get("x-api-key")) is not None:
        authorization = f"Bearer {key}"
    request.app.state.api_key_check(authorization)


async def owner_of(request: Request) -> str:
    """Who owns the files and batches a request creates or sees: the digest of its API key (keys themselves are
    never stored), or one anonymous owner when the server has no keys."""
    if not request.app.state.api_key_check.enabled:
        return "anonymous"
    authorization = request.headers.get("authorization") or f"Bearer {request.headers.get('x-api-key', '')}"
    token = authorization.partition(" ")[2].strip()
    return hashlib.sha256(token.encode()).hexdigest()


PipelineDep = Annotated[GenerationPipeline, Depends(get_pipeline)]
EmbedderDep = Annotated[Embedder, Depends(get_embedder)]
RecordDep = Annotated[RequestRecord, Depends(get_record)]
OwnerDep = Annotated[str, Depends(owner_of)]
