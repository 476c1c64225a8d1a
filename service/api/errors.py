"""The one mapping from the serving core's error kinds (service/serving/errors.py) to HTTP.

`install_error_handlers` maps them (and FastAPI's own errors) to a status code and the uniform body
{"error": {"code", "message", "field"}}; under /v2 (the Open Inference Protocol) to that protocol's body
{"error": "<message>"}, with 400 for every bad input.
A client never sees a 500 or a stack trace for its input: anything unexpected is logged and answered as
`internal_error` without details.
"""

from __future__ import annotations

import logging
from typing import Any

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
    ModelNotFound,
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
    ModelNotFound: 404,
}
V2_PREFIX = "/v2"
V2_STATUS: dict[type[ServiceError], int] = {**HTTP_STATUS, InvalidRequest: 400}  # V2 clients: bad input is 400


def is_v2(request: Request) -> bool:
    """A request to the Open Inference Protocol's paths, answered in its error shape."""
    return request.url.path == V2_PREFIX or request.url.path.startswith(V2_PREFIX + "/")


def status_of(error: ServiceError, *, v2: bool = False) -> int:
    """HTTP status for a service error (500 for an unmapped subclass, which is a bug)."""
    statuses = V2_STATUS if v2 else HTTP_STATUS
    for cls in type(error).__mro__:
        if cls in statuses:
            return statuses[cls]
    return 500


def error_body(code: str, message: str, field: str | None = None, *, v2: bool = False) -> dict[str, Any]:
    if v2:
        return {"error": message}
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(error: ServiceError, *, v2: bool = False, retry_after_s: int | None = None) -> JSONResponse:
    """`retry_after_s`: the Retry-After of a V2 not-ready 503 (an overloaded 503 carries its own)."""
    headers = None
    if isinstance(error, Overloaded):
        headers = {"Retry-After": str(error.retry_after_s)}
    elif isinstance(error, NotReady) and v2 and retry_after_s is not None:
        headers = {"Retry-After": str(retry_after_s)}
    elif isinstance(error, BodyReadTimeout | ClientDisconnected):
        headers = {"Connection": "close"}  # the rest of the body may never come: do not wait for it
    body = error_body(error.code, error.message, error.field, v2=v2)
    return JSONResponse(body, status_code=status_of(error, v2=v2), headers=headers)


def service_error_response(request: Request, exc: ServiceError) -> JSONResponse:
    """A service error as the response of `request` (/v2: the protocol's shape); the handler FastAPI calls and
    the one the scoring routes' short way (service/api/scoring_path.py) calls."""
    if isinstance(exc, BodyReadTimeout | ClientDisconnected):  # the client's fault: one line, no traceback
        logger.warning("%s %s: %s", request.method, request.url.path, exc.message)
    if is_v2(request):
        return error_response(exc, v2=True, retry_after_s=request.app.state.service.settings.retry_after_s)
    return error_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error a request can raise to the uniform JSON body."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": "invalid"}
        field = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
        code = "malformed_json" if first.get("type") == "json_invalid" else "invalid_request"
        status = 400 if code == "malformed_json" or is_v2(request) else 422
        body = error_body(code, str(first.get("msg")), field, v2=is_v2(request))
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = error_body(code, str(exc.detail), v2=is_v2(request))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error serving %s %s", request.method, request.url.path)
        body = error_body("internal_error", "internal error; see the server log", v2=is_v2(request))
        return JSONResponse(body, status_code=500)
