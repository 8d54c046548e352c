"""Typed exceptions and the one table that maps them to OpenAI error bodies and HTTP statuses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import BaseModel

GENERIC_500_MESSAGE = "The server had an error while processing your request."


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """An error as every layer describes it: OpenAI's body. Other protocols render it in their own shape."""

    error: ErrorDetail


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


class GrammarTooComplexError(InvalidRequestError):
    """An output grammar llama.cpp would take too long to follow: its build ran past the time budget, or one token
    under it took longer than the scheduler's per-token limit (README: Structured output). A 400, as the other
    refusals of a grammar: the request's grammar is at fault, and a retry as it is fails the same way."""

    code = "grammar_too_complex"


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


class PreemptedError(APIError):
    """A batch request ended at a token boundary to give its sequence to an interactive request that waited for
    one (server/engine/batching.py); whoever runs the batch retries it."""

    status_code = 503
    error_type = "server_error"
    code = "preempted"
    retry_after = 1

    def __init__(self) -> None:
        super().__init__("This batch request gave its sequence to interactive requests; it will be retried.")


class NoRoomForBatch(Exception):
    """A batch request found no free sequence: batch work runs only in capacity interactive requests leave.
    Raised by `Engine.generate` before anything starts; `await exc.wait()` returns when the engine next frees an
    admission (any request ends), so the caller tries again then instead of polling."""

    def __init__(self, wait: Callable[[], Awaitable[None]]) -> None:
        super().__init__("No free sequence for a batch request.")
        self.wait = wait


class PayloadTooLargeError(APIError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body is larger than this server accepts ({limit} bytes).")


class FileTooLargeError(PayloadTooLargeError):
    code = "file_too_large"

    def __init__(self, limit: int) -> None:
        APIError.__init__(self, f"The file is larger than this server accepts ({limit} bytes).", param="file")


class StorageLimitError(PayloadTooLargeError):
    code = "storage_limit_exceeded"

    def __init__(self, limit: int) -> None:
        APIError.__init__(
            self,
            f"Storing this file would take this API key past its storage limit of {limit} bytes; delete files it "
            "no longer needs (GET /v1/files lists them).",
            param="file",
        )


class TooManyOpenBatchesError(APIError):
    status_code = 429
    error_type = "rate_limit_exceeded"
    code = "too_many_open_batches"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"This API key already has {limit} batches that have not ended, this server's limit; wait for one to "
            "end or cancel one."
        )


class ShuttingDownError(APIError):
    status_code = 503
    error_type = "server_error"
    code = "shutting_down"

    def __init__(self) -> None:
        super().__init__("The server is shutting down and accepts no new requests.")


class SlowClientError(APIError):
    """A streaming client stopped reading (or fell too far behind): its generation was cancelled to free the
    model for others. Only ever sent mid-stream, as an error event."""

    status_code = 408
    error_type = "server_error"
    code = "slow_client"

    def __init__(self) -> None:
        super().__init__("This stream was ended because the client read it too slowly.")


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
    """Turn pydantic/FastAPI validation errors into one 400 naming the offending parameter by its path
    (`tools[0].function.name`)."""
    if not errors:
        return InvalidRequestError("Invalid request body.")
    first = errors[0]
    if first.get("type") in _NOT_AN_OBJECT and not field_path(first.get("loc", ())):  # about the body itself
        return InvalidRequestError(
            "We could not parse the JSON body of your request. It must be a JSON object.", code="invalid_json"
        )
    error, path = _most_specific(errors)
    param = param_of(path)
    if error.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        value = error.get("input")
        message = f"Invalid value for '{param}': {str(error.get('msg', 'invalid'))[:_MESSAGE_CHARS]}"
        if not isinstance(value, dict | list) and value is not None:
            message += f" (got {_cut(repr(value), _VALUE_CHARS)})"
        message += "."
    return InvalidRequestError(message, param=param or None)


_NOT_AN_OBJECT = frozenset({"json_invalid", "json_type", "model_type", "model_attributes_type", "dict_type"})
_MESSAGE_CHARS, _VALUE_CHARS, _KEY_CHARS = 300, 80, 40  # a client's keys and values are echoed, cut short
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "bytes"})


def field_path(loc: Sequence[int | str]) -> list[int | str]:
    """The path of the request field an error location points at, without pydantic's union branch labels:
    scalar type names ('str'), labels with brackets ('list[str]', "literal['auto']", 'function-after[...]',
    '[key]'), other validator labels ('constrained-str') and model class names, which begin with a capital
    ('ResponseFormatJSONSchema': request field names never do; see request_parts.tagged_union)."""
    parts = list(loc[1:] if loc[:1] in (("body",), ["body"]) else loc)
    return [part for part in parts if isinstance(part, int) or not _is_type_tag(str(part))]


def param_of(path: Sequence[int | str]) -> str:
    """`tools[0].function.name` from ['tools', 0, 'function', 'name']."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = _cut(str(part), _KEY_CHARS)
            out += f".{name}" if out else name
    return out


def _most_specific(errors: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[int | str]]:
    """Of the errors about the first offending field, the one deepest in it, and of those one that is not a
    plain type mismatch: when no branch of a union matches, pydantic reports each, and that error belongs to
    the branch the input was meant for (`tool_choice` given as an object fails as a string at `tool_choice` and
    as an object at `tool_choice.function`; token ids `[1, -1]` fail as strings at `input[0]` and as token ids,
    by a bound, at `input[1]`)."""
    paths = [field_path(error.get("loc", ())) for error in errors]
    top = paths[0][:1]

    def specificity(i: int) -> tuple[int, bool]:
        return len(paths[i]), not str(errors[i].get("type", "")).endswith("_type")

    best = 0
    for i in range(1, len(errors)):
        if paths[i][:1] == top and specificity(i) > specificity(best):
            best = i
    error, path = errors[best], paths[best]
    context = error.get("ctx") or {}
    if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):  # a plain discriminated union
        key = str(context.get("discriminator", "")).strip("'")
        if key.isidentifier():
            path = [*path, key]
    return error, path


def _is_type_tag(part: str) -> bool:
    return (
        part in _TYPE_TAGS
        or part[:1].isupper()
        or "[" in part
        or part.startswith(("function-", "constrained-", "lax-", "json-or-python", "tagged-union", "nullable"))
    )


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class ForbiddenError(APIError):
    """Refused by where the request comes from, not by what it asks: no key can make it pass."""

    status_code = 403
    error_type = "request_forbidden"


class ForbiddenHostError(ForbiddenError):
    code = "forbidden_host"

    def __init__(self, host: str) -> None:
        super().__init__(
            f"This server has no API key, so it only answers requests addressed to localhost; the Host header "
            f"{host[:64]!r} is not a loopback name. Set an API key to serve other names."
        )


class ForbiddenOriginError(ForbiddenError):
    code = "forbidden_origin"

    def __init__(self, origin: str) -> None:
        super().__init__(
            f"This server has no API key, so it only answers browser pages from allowed origins; {origin[:64]!r} "
            "is not one. An operator can allow it with --cors-origin (SLM_CORS_ORIGINS)."
        )


class ModelBusyError(APIError):
    """An unload asked for a model that requests are using (or that is loading): it is refused, never cut off."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "model_busy"
    retry_after = 1

    def __init__(self, model: str, why: str) -> None:
        super().__init__(f"The model `{model}` {why}; it was not unloaded. Retry once it is idle.", param="model")


class AdminKeyRequiredError(APIError):
    """An admin route asked with a key that is not an admin key, or on a server where no key can open it."""

    status_code = 403
    error_type = "invalid_request_error"
    code = "admin_key_required"
