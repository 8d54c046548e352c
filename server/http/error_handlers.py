"""The HTTP side of the error table: every failure leaves as an OpenAI error body with its status.

Unexpected exceptions are turned into the generic 500 by the request middleware, the outermost layer."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from server.errors import (
    APIError,
    InternalError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    from_validation_errors,
)

logger = logging.getLogger(__name__)


def error_response(error: APIError, request: Request | None = None) -> JSONResponse:
    """The error in the shape of the protocol the request's path belongs to (OpenAI's by default)."""
    shapes = None if request is None else getattr(request.app.state, "error_shapes", None)
    body = error.body().model_dump(mode="json") if shapes is None else shapes.body(request.url.path, error)
    return JSONResponse(body, status_code=error.status_code, headers=error.headers())


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc, request)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # A query or path parameter is named as the client wrote it (`limit`), as a body field is.
    errors = [
        {**error, "loc": tuple(error["loc"])[1:]}
        if tuple(error.get("loc", ()))[:1] in (("query",), ("path",))
        else error
        for error in exc.errors()
    ]
    return error_response(from_validation_errors(errors), request)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    route = f"{request.method} {request.url.path}"
    error: APIError
    if exc.status_code == 404:
        error = NotFoundError(f"Unknown request URL: {route}.")
    elif exc.status_code == 405:
        error = MethodNotAllowedError(f"Method not allowed: {route}.")
    elif 400 <= exc.status_code < 500:
        error = InvalidRequestError(str(exc.detail))
        error.status_code = exc.status_code
    else:
        error = InternalError()
    return error_response(error, request)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
