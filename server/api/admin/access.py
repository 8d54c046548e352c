"""Who may use the admin routes.

With admin keys configured, `Authorization: Bearer <admin key>`: no key or an unknown one is a 401, a valid client
key a 403 (a client key never opens the admin API). With no admin key, the admin API is open only where everything
is: a server on a loopback address with no key at all (the loopback guard keeps browsers' pages out); elsewhere no
key can open it (403), so an operator who configured client keys, or serves beyond loopback, must add an admin key.
"""

from __future__ import annotations

from fastapi import Request

from server.errors import AdminKeyRequiredError, AuthenticationError
from server.http.deps import APIKeyCheck


class AdminAccess:
    def __init__(self, admin_keys: tuple[str, ...], client_check: APIKeyCheck, *, open_without_key: bool) -> None:
        self._admin = APIKeyCheck(admin_keys)
        self._client = client_check  # the client routes' check (which admin keys pass too)
        self._open = open_without_key

    def __call__(self, authorization: str | None) -> None:
        if self._open:
            return
        if not self._admin.enabled:
            if not self._client.enabled:  # beyond loopback with no key at all
                raise AdminKeyRequiredError(
                    "The admin API is open without a key only on a loopback address; this server listens beyond "
                    "it. Configure an admin key (--admin-key / SLM_ADMIN_KEYS) to use it."
                )
            self._client(authorization)  # a missing or unknown key: 401
            raise AdminKeyRequiredError(
                "This route needs an admin key, and this server has none: client API keys cannot use the admin "
                "API. Configure one with --admin-key / SLM_ADMIN_KEYS."
            )
        try:
            self._admin(authorization)
        except AuthenticationError:
            if authorization and self._client.enabled and _passes(self._client, authorization):
                raise AdminKeyRequiredError(
                    "This route needs an admin key (--admin-key / SLM_ADMIN_KEYS); a client API key cannot use it."
                ) from None
            raise


def _passes(check: APIKeyCheck, authorization: str) -> bool:
    try:
        check(authorization)
    except AuthenticationError:
        return False
    return True


async def require_admin(request: Request) -> None:
    request.app.state.admin_access(request.headers.get("authorization"))
