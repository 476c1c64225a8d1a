"""The one mapping from the serving core's error kinds (service/serving/errors.py) to HTTP.

`install_error_handlers` maps them (and FastAPI's own errors) to a status code and the uniform body
{"error": {"code", "message", "field"}}.
A client never sees a 500 or a stack trace for its input: anything unexpected is logged and answered as
`internal_error` without details.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.serving.errors import (
    AdminDisabled,
    BodyReadTimeout,
    ClientDisconnected,
    ConfigNotWritten,
    InvalidRequest,
    MalformedRequest,
    ModelRejected,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ReloadInProgress,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
)

logger = logging.getLogger(__name__)


# nginx's 499 "client closed request": counted apart from 5xx, never seen by the client that left.
CLIENT_CLOSED_REQUEST = 499

HTTP_STATUS: dict[type[ServiceError], int] = {
    MalformedRequest: 400,
    InvalidRequest: 422,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    BodyReadTimeout: 408,
    ClientDisconnected: CLIENT_CLOSED_REQUEST,
    Overloaded: 503,
    NotReady: 503,
    Unauthorized: 401,
    AdminDisabled: 403,
    ModelRejected: 409,
    ReloadInProgress: 409,
    ConfigNotWritten: 503,
}


def status_of(error: ServiceError) -> int:
    """HTTP status for a service error (500 for an unmapped subclass, which is a bug)."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def error_body(code: str, message: str, field: str | None = None) -> dict:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(error: ServiceError) -> JSONResponse:
    headers = None
    if isinstance(error, Overloaded):
        headers = {"Retry-After": str(error.retry_after_s)}
    elif isinstance(error, BodyReadTimeout | ClientDisconnected):
        headers = {"Connection": "close"}  # the rest of the body may never come: do not wait for it
    body = error_body(error.code, error.message, error.field)
    return JSONResponse(body, status_code=status_of(error), headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error a request can raise to the uniform JSON body."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if isinstance(exc, BodyReadTimeout | ClientDisconnected):  # the client's fault: one line, no traceback
            logger.warning("%s %s: %s", request.method, request.url.path, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": "invalid"}
        field = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
        code = "malformed_json" if first.get("type") == "json_invalid" else "invalid_request"
        status = 400 if code == "malformed_json" else 422
        return JSONResponse(error_body(code, str(first.get("msg")), field), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error serving %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal error; see the server log"), status_code=500)
