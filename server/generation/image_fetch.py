"""Remote image URLs: refused unless an operator allows their host (SLM_REMOTE_IMAGE_HOSTS), then fetched within
a time limit for the whole fetch and a cap on the body, with no redirect followed.

An allowed host is an operator's choice to let clients make this server send GET requests to it; nothing else
is ever fetched. The body's bytes are never logged or echoed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from urllib.parse import SplitResult, urlsplit

import httpx

from server.errors import APIError, InvalidRequestError

logger = logging.getLogger(__name__)

HOSTS_SETTING = "SLM_REMOTE_IMAGE_HOSTS"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SHOWN_CHARS = 80  # of a client's host name, in a message


def check_remote(url: str, where: str, hosts: Sequence[str]) -> None:
    """Refuse `url` unless it is http(s) to a host of `hosts` (`host`, which means the scheme's default port, or
    `host:port`; case-insensitive, exact) and carries no credentials. No I/O."""
    if not hosts:
        raise InvalidRequestError(
            f"Invalid value for '{where}': this server does not fetch images from URLs; send the image in the "
            "request as a base64 data URL (data:image/png;base64,...). An operator can allow hosts to fetch "
            f"images from with {HOSTS_SETTING} (remote_image_hosts).",
            param=where,
        )
    parts = _split(url, where)
    if parts.username is not None or parts.password is not None:
        raise InvalidRequestError(f"Invalid value for '{where}': an image URL may not carry credentials.", param=where)
    if not any(_matches(parts, entry) for entry in hosts):
        host = (parts.hostname or "")[:_SHOWN_CHARS]
        raise InvalidRequestError(
            f"Invalid value for '{where}': images are not fetched from {host!r} (port {_port(parts)}); this server "
            f"fetches them only from the hosts its operator allows ({HOSTS_SETTING}).",
            param=where,
        )


async def fetch_all(targets: Sequence[tuple[str, str]], *, max_bytes: int, timeout_s: float) -> list[bytes]:
    """The bodies of `targets` ((url, where) pairs, each already passed by `check_remote`), fetched at once; the
    first refusal cancels the others."""
    if not targets:
        return []
    limits = httpx.Limits(max_connections=len(targets))
    # trust_env off: no proxy or .netrc of the server's environment applies to a URL a client chose
    async with httpx.AsyncClient(follow_redirects=False, timeout=timeout_s, limits=limits, trust_env=False) as client:
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(_fetch(client, url, where, max_bytes, timeout_s)) for url, where in targets]
        except BaseExceptionGroup as failed:
            refusals = [exc for exc in failed.exceptions if isinstance(exc, APIError)]
            raise (refusals or failed.exceptions)[0] from None
    return [task.result() for task in tasks]


async def _fetch(client: httpx.AsyncClient, url: str, where: str, max_bytes: int, timeout_s: float) -> bytes:
    try:
        async with asyncio.timeout(timeout_s):  # the whole fetch: connect, headers and every chunk of the body
            return await _body(client, url, where, max_bytes)
    except (TimeoutError, httpx.TimeoutException):
        raise InvalidRequestError(
            f"Invalid value for '{where}': the image did not arrive within {timeout_s:g} s.", param=where
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL: control characters urlsplit let through
        logger.info("image at %s not fetched: %s", where, type(exc).__name__)
        raise InvalidRequestError(
            f"Invalid value for '{where}': the image could not be fetched ({type(exc).__name__}).", param=where
        ) from None


async def _body(client: httpx.AsyncClient, url: str, where: str, max_bytes: int) -> bytes:
    # identity: the cap counts the bytes that arrive, so no compressed body can expand past it as it is read
    headers = {"Accept": "image/*", "Accept-Encoding": "identity"}
    async with client.stream("GET", url, headers=headers) as response:
        status = response.status_code
        if response.is_redirect:
            raise InvalidRequestError(
                f"Invalid value for '{where}': the image URL answered with a redirect (HTTP {status}), which this "
                "server does not follow; send the image's own URL.",
                param=where,
            )
        if not response.is_success:
            raise InvalidRequestError(
                f"Invalid value for '{where}': fetching the image answered HTTP {status}.", param=where
            )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise _too_large(where, max_bytes)
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > max_bytes:
                raise _too_large(where, max_bytes)
        return bytes(body)


def _too_large(where: str, max_bytes: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid value for '{where}': the image is larger than this server accepts ({max_bytes} bytes).", param=where
    )


def _split(url: str, where: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        raise InvalidRequestError(f"Invalid value for '{where}': not a valid http(s) URL.", param=where)
    return parts


def _port(parts: SplitResult) -> int:
    return parts.port or _DEFAULT_PORTS[parts.scheme.lower()]


def _matches(parts: SplitResult, entry: str) -> bool:
    try:
        allowed = urlsplit(f"//{entry.strip()}")
        port = allowed.port
    except ValueError:
        return False
    return allowed.hostname == parts.hostname and (port or _DEFAULT_PORTS[parts.scheme.lower()]) == _port(parts)
