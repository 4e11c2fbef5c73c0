"""Errors as JSON: every failure of the API is `{"error": {"status", "type", "message"}}` with its HTTP status.

Client errors (4xx) are the server's own refusals (`ApiError`: limits, authentication, a missing index),
the request checks of FastAPI, and exactly the core's documented input errors (`CLIENT_ERRORS`). Any other
exception is a bug or a problem of the server: a 500 whose body says only "internal error" and the request's
id (also in the `X-Request-ID` header); its traceback goes to the log under that id (see `metrics.Guard`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from ...errors import DataError, ImageInputError, NoImagesError, UsageError
from .batcher import QueueFull, Timeout

RETRY_AFTER_S = 1  # what a 503 asks the client to wait
REQUEST_ID_HEADER = "x-request-id"
# The core's errors that describe the client's input, and their statuses; every other exception is a 500.
CLIENT_ERRORS: dict[type[Exception], int] = {
    UsageError: 400,  # a value outside its meaning (a blank label, a template without {})
    DataError: 400,
    ImageInputError: 422,  # an image that cannot be read or used (not an image, truncated, too many pixels)
    NoImagesError: 422,
}
log = logging.getLogger("siglip.serve")


class ApiError(Exception):
    """A request the API refuses: its HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The JSON body and status of an error."""
    body = {"error": {"status": status, "type": HTTPStatus(status).phrase, "message": message}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def internal_error(request_id: str) -> JSONResponse:
    """The 500 of an unexpected exception: no detail of it, only the id that finds it in the log."""
    return error_response(500, f"internal error (request id {request_id}: the server's log has the details)")


def validation_message(errors: list[Any]) -> str:
    """One line per pydantic error: where in the request, and what is wrong."""
    lines = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        lines.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(lines) or "the request is not valid"


def install_error_handlers(app: FastAPI) -> None:
    """Turn the client errors the routes raise into JSON errors with their status (the rest: `Guard`)."""

    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.message, err.headers)

    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        message = err.detail if err.status_code != 404 else f"no such endpoint: {request.url.path}"
        return error_response(err.status_code, str(message), err.headers)

    async def invalid_request(_: Request, err: RequestValidationError | ValidationError) -> JSONResponse:
        return error_response(422, validation_message(list(err.errors())))

    async def client_error(_: Request, err: Exception) -> JSONResponse:
        status = next(CLIENT_ERRORS[kind] for kind in type(err).__mro__ if kind in CLIENT_ERRORS)
        return error_response(status, str(err))

    async def busy(_: Request, err: QueueFull | Timeout) -> JSONResponse:
        return error_response(503, f"{err}: try again later", {"Retry-After": str(RETRY_AFTER_S)})

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(ValidationError, invalid_request)
    for error in CLIENT_ERRORS:
        app.add_exception_handler(error, client_error)
    app.add_exception_handler(QueueFull, busy)
    app.add_exception_handler(Timeout, busy)
