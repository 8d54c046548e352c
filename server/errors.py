"""Typed exceptions and the one table that maps them to OpenAI error bodies and HTTP statuses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.schemas import ErrorBody, ErrorDetail

GENERIC_500_MESSAGE = "The server had an error while processing your request."


class APIError(Exception):
    """Base of every error that reaches a client. Subclasses fix the status, type and code."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None
    retry_after: int | None = None  # seconds, sent as Retry-After when set

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> ErrorBody:
        return ErrorBody(
            error=ErrorDetail(message=self.message, type=self.error_type, param=self.param, code=self.code)
        )

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class InvalidRequestError(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedParameterError(InvalidRequestError):
    code = "unsupported_parameter"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class NotFoundError(APIError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.", param="model")


class ModelNotPulledError(NotFoundError):
    code = "model_not_pulled"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` is configured but its file is not on this server. "
            f"An operator can fetch it with `slm-server pull {model}`.",
            param="model",
        )


class MethodNotAllowedError(APIError):
    status_code = 405
    error_type = "invalid_request_error"


class OverloadedError(APIError):
    status_code = 429
    error_type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelUnavailableError(APIError):
    """The model is configured but cannot serve: its file is missing, it failed to load, or it is restarting."""

    status_code = 503
    error_type = "server_error"
    code = "model_unavailable"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelCrashedError(APIError):
    """The model's worker process died while serving; the next request starts a fresh one."""

    status_code = 503
    error_type = "server_error"
    code = "model_crashed"
    retry_after = 1

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` stopped unexpectedly while serving this request; retry it.")


class PayloadTooLargeError(APIError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body is larger than this server accepts ({limit} bytes).")


class ShuttingDownError(APIError):
    status_code = 503
    error_type = "server_error"
    code = "shutting_down"

    def __init__(self) -> None:
        super().__init__("The server is shutting down and accepts no new requests.")


class AuthenticationError(APIError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str = "Incorrect API key provided.") -> None:
        super().__init__(message)

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class RequestTimeoutError(APIError):
    status_code = 504
    error_type = "server_error"
    code = "timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request took longer than this server's limit of {seconds:g} s.")


class InternalError(APIError):
    """Anything unexpected. Its message is always the generic one; details belong in the log."""

    def __init__(self) -> None:
        super().__init__(GENERIC_500_MESSAGE)


def from_exception(exc: BaseException) -> APIError:
    """Every failure becomes an APIError; unknown ones become the generic 500."""
    return exc if isinstance(exc, APIError) else InternalError()


def from_validation_errors(errors: Sequence[dict[str, Any]]) -> InvalidRequestError:
    """Turn pydantic/FastAPI validation errors into one 400 naming the first offending parameter."""
    if not errors:
        return InvalidRequestError("Invalid request body.")
    first = errors[0]
    if (
        first.get("type") in ("json_invalid", "json_type", "model_type", "model_attributes_type", "dict_type")
        and len(first["loc"]) <= 1
    ):
        return InvalidRequestError(
            "We could not parse the JSON body of your request. It must be a JSON object.", code="invalid_json"
        )
    loc = [part for part in first.get("loc", ()) if part != "body"]
    # Union branches add their type name to the location ("stop.str", "stop.list[str]"): keep the field path.
    path = [str(part) for part in loc if isinstance(part, int) or not _is_type_tag(str(part))]
    param = _dotted(path)
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        value = first.get("input")
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}"
        if not isinstance(value, dict | list) and value is not None:
            message += f" (got {value!r})"
        message += "."
    return InvalidRequestError(message, param=param or None)


def _is_type_tag(part: str) -> bool:
    return (
        part in ("str", "int", "float", "bool", "list", "dict")
        or "[" in part
        or part.startswith(("function-", "constrained-"))
    )


def _dotted(path: list[str]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out
