"""Which protocol's error body a request gets: OpenAI's by default; a protocol registers its own paths.

The status and headers come from the typed exception either way (server/errors.py): only the body's shape
differs, so an error raised anywhere (auth, limits, routing, the pipeline) reaches each client in its terms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.errors import APIError

BodyOf = Callable[[APIError], dict[str, Any]]


class ErrorShapes:
    def __init__(self) -> None:
        self._shapes: list[tuple[str, BodyOf]] = []

    def register(self, path_prefix: str, body_of: BodyOf) -> None:
        self._shapes.append((path_prefix, body_of))

    def body(self, path: str, error: APIError) -> dict[str, Any]:
        for prefix, body_of in self._shapes:
            if path.startswith(prefix):
                return body_of(error)
        return error.body().model_dump(mode="json")
