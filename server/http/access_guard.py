"""ASGI middleware that refuses requests by where they come from, before routing.

Loopback guard. A server with no API key on a loopback address trusts whoever can reach it, and that includes
every web page the machine's browser opens: through DNS rebinding (a hostile name that resolves to 127.0.0.1)
or a cross-site form post. Browsers always send the name they connected to as `Host`, and `Origin` on
cross-origin requests and on every POST; so with the guard on, a request is refused (403) unless its `Host` is a
loopback name and its `Origin`, when present, is an allowed CORS origin or this server itself. The guard covers
every path, /health and /ready included: probes on the machine address localhost anyway.

Documentation keys. With API keys configured, the OpenAPI schema and the documentation pages (/docs, /redoc,
/openapi.json) need a key like /v1 does: they are FastAPI's own routes, which take no dependencies.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

from starlette.datastructures import Headers

from server.errors import APIError, ForbiddenHostError, ForbiddenOriginError
from server.http.error_shapes import ErrorShapes
from server.http.middleware import ASGIApp, Receive, Scope, Send, send_error

# A Host header: a name or IPv4 address, or an IPv6 address in brackets, then an optional port.
_HOST_HEADER = re.compile(r"^(?P<name>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::\d{1,5})?$")


def is_loopback_name(host: str) -> bool:
    """`localhost`, or an address in 127.0.0.0/8 or ::1 (IPv6 with or without brackets)."""
    host = host.lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def is_loopback_host_header(value: str) -> bool:
    """A `Host` header naming a loopback name, with or without a port."""
    match = _HOST_HEADER.match(value)
    return bool(match) and is_loopback_name(match["name"])


class AccessGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        loopback_only: bool,
        allowed_origins: Iterable[str],
        api_key_check: Callable[[str | None], None],
        keyed_paths: Iterable[str],
        error_shapes: ErrorShapes | None = None,
    ) -> None:
        self._app = app
        self._loopback_only = loopback_only
        self._origins = frozenset(allowed_origins)
        self._api_key_check = api_key_check  # raises AuthenticationError; passes everything when no key is set
        self._keyed_paths = frozenset(keyed_paths)
        self._shapes = error_shapes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            try:
                if self._loopback_only:
                    self._check_loopback(headers)
                if scope["path"] in self._keyed_paths:
                    self._api_key_check(headers.get("authorization"))
            except APIError as error:
                await send_error(send, error, self._shapes, scope["path"])
                return
        await self._app(scope, receive, send)

    def _check_loopback(self, headers: Headers) -> None:
        host = headers.get("host", "")
        if not is_loopback_host_header(host):
            raise ForbiddenHostError(host)
        origin = headers.get("origin")
        if origin is None or origin in self._origins or "*" in self._origins:
            return
        # A page this server serves itself (/docs) posts with its own origin: the same host and port.
        scheme, _, authority = origin.partition("://")
        if scheme.lower() in ("http", "https") and authority.lower() == host.lower():
            return
        raise ForbiddenOriginError(origin)
