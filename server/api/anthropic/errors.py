"""Any APIError in Anthropic's error shape: `{"type": "error", "error": {"type": ..., "message": ...}}`, as a
response body or, once a stream has begun, as an `error` event (after which the stream ends).

Anthropic's body has no `param` or `code`: the offending field's path leads the message instead.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from server.errors import APIError

Event = tuple[str, dict[str, Any]]

# Anthropic's error types by HTTP status; any other 4xx is an invalid request, any other 5xx an api_error.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class ErrorObject(BaseModel):
    type: str
    message: str


class ErrorBody(BaseModel):
    type: Literal["error"] = "error"
    error: ErrorObject
    request_id: str | None = None


def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_message(error: APIError) -> str:
    if error.param and error.param not in error.message:
        return f"{error.param}: {error.message}"
    return error.message


def error_body(error: APIError, request_id: str | None = None) -> dict[str, Any]:
    detail = ErrorObject(type=error_type(error.status_code), message=error_message(error))
    return ErrorBody(error=detail, request_id=request_id).model_dump(mode="json", exclude_none=True)


def error_event(error: APIError, request_id: str | None = None) -> Event:
    """The mid-stream form: an `error` event; the stream ends after it, with no message_stop."""
    return "error", error_body(error, request_id)
