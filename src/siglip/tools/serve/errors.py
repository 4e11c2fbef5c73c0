"""Errors as JSON: every failure of the API is `{"error": {"status", "type", "message"}}` with its HTTP status."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from ...errors import ImageInputError
from .batcher import QueueFull, Timeout

RETRY_AFTER_S = 1  # what a 503 asks the client to wait


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


def validation_message(errors: list[Any]) -> str:
    """One line per pydantic error: where in the request, and what is wrong."""
    lines = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        lines.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(lines) or "the request is not valid"


def install_error_handlers(app: FastAPI) -> None:
    """Turn every exception the routes raise into a JSON error with the right status."""

    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.message, err.headers)

    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        message = err.detail if err.status_code != 404 else f"no such endpoint: {request.url.path}"
        return error_response(err.status_code, str(message), err.headers)

    async def invalid_request(_: Request, err: RequestValidationError | ValidationError) -> JSONResponse:
        errors = list(err.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "the request body is not valid JSON")
        return error_response(422, validation_message(errors))

    async def unreadable_image(_: Request, err: ImageInputError) -> JSONResponse:
        return error_response(422, str(err))

    async def bad_value(_: Request, err: ValueError) -> JSONResponse:
        return error_response(400, str(err))

    async def busy(_: Request, err: QueueFull | Timeout) -> JSONResponse:
        return error_response(503, f"{err}: try again later", {"Retry-After": str(RETRY_AFTER_S)})

    async def internal(_: Request, err: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(err).__name__}: {err}")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(ValidationError, invalid_request)
    app.add_exception_handler(ImageInputError, unreadable_image)
    app.add_exception_handler(ValueError, bad_value)
    app.add_exception_handler(QueueFull, busy)
    app.add_exception_handler(Timeout, busy)
    app.add_exception_handler(Exception, internal)
