"""Shared request-time dependencies: the service's state, the bounded body reader and the admin check."""

from __future__ import annotations

import asyncio
import hmac
import re
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from service.serving.admission import InferencePool
from service.serving.codec import REQUEST_ID_PATTERN
from service.serving.config_watch import ConfigWatcher
from service.serving.errors import (
    AdminDisabled,
    BodyReadTimeout,
    ClientDisconnected,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from service.serving.hosts import ModelHost, ModelHosts
from service.serving.metrics import ServiceMetrics
from service.serving.runtime import ModelRuntime
from service.serving.scorer import RankResult, RequestScorer
from service.serving.settings import Settings
from service.serving.shadow import ShadowComparator
from service.serving.validation import request_error

_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
JSON_MEDIA_TYPE = "application/json"
ADMIN_MAX_BODY_BYTES = 64 * 1024  # an admin body is a few fields
# pydantic error type -> the error code clients see (the same codes as POST /rank's top-level fields)
_FIELD_ERROR_CODES = {"missing": "missing_field", "extra_forbidden": "unknown_field"}

BodyModel = TypeVar("BodyModel", bound=BaseModel)


@dataclass
class ServiceState:
    """Everything a handler may touch, built once per app by create_app (at `app.state.service`)."""

    settings: Settings
    hosts: ModelHosts
    metrics: ServiceMetrics
    draining: bool = field(default=False)

    def host(self, name: str | None = None) -> ModelHost:
        """The host of model `name` (None: the default model); UnknownModel (404) for one not served here."""
        return self.hosts.default if name is None else self.hosts.get(name)

    # The default model's parts, for the handlers and tests that serve only it.
    @property
    def runtime(self) -> ModelRuntime:
        return self.hosts.default.runtime

    @property
    def pool(self) -> InferencePool:
        return self.hosts.default.pool

    @property
    def shadow(self) -> ShadowComparator:
        return self.hosts.default.shadow

    @property
    def scorer(self) -> RequestScorer:
        return self.hosts.default.scorer

    @property
    def config(self) -> ConfigWatcher:
        return self.hosts.default.config


async def get_state(request: Request) -> ServiceState:
    """The app's state, as a dependency. Async on purpose: FastAPI runs a plain `def` dependency on its thread
    pool, a thread hop per request (docs/peers.md). The scoring routes call `state_of` instead: resolving a
    dependency costs the event loop about 4% of a small request's time there (a py-spy profile under load)."""
    return state_of(request)


def state_of(request: Request) -> ServiceState:
    """The app's state, read directly (the scoring routes, where every step on the event loop counts)."""
    state: ServiceState = request.app.state.service
    return state


def is_json(content_type: str | None) -> bool:
    """`application/json`, parameters (`; charset=utf-8`) allowed."""
    return content_type is not None and content_type.partition(";")[0].strip().lower() == JSON_MEDIA_TYPE


async def read_body(
    request: Request, limit: int, timeout_s: float, *, optional: bool = False, media_types: tuple[str, ...] = ()
) -> bytes:
    """The request body, declared as JSON, read within `timeout_s` and refused as soon as it passes `limit` bytes.

    Any other Content-Type (or none) is a 415 before a byte is read: a browser page cannot post a form or
    text/plain body cross-site without a preflight. `optional`: an empty body needs no Content-Type.
    `media_types`: a protocol's own Content-Types instead of JSON's rule, none at all included (the Open Inference
    Protocol's clients send none); a form's or text/plain stay a 415.
    """
    content_type = request.headers.get("content-type")
    if media_types:
        _check_media_type(content_type, media_types)
    elif content_type is not None and not is_json(content_type):
        raise UnsupportedMediaType(f"Content-Type must be {JSON_MEDIA_TYPE}, got {content_type[:100]!r}")
    if content_type is None and not optional and not media_types:
        raise UnsupportedMediaType(f"Content-Type must be {JSON_MEDIA_TYPE}; the request has none")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")
    body = await _read_within(request, limit, timeout_s)
    if body and content_type is None and not media_types:
        raise UnsupportedMediaType(f"Content-Type must be {JSON_MEDIA_TYPE} for a request with a body")
    return body


def _check_media_type(content_type: str | None, media_types: tuple[str, ...]) -> None:
    if content_type is not None and content_type.partition(";")[0].strip().lower() not in media_types:
        raise UnsupportedMediaType(f"Content-Type must be one of {list(media_types)} or none, got "
                                   f"{content_type[:100]!r}")


async def _read_within(request: Request, limit: int, timeout_s: float) -> bytes:
    """The streamed body; a stall past `timeout_s` is BodyReadTimeout, a client gone is ClientDisconnected."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyReadTimeout(
            f"the body did not arrive within {timeout_s:g} s (body_read_timeout_s); {size} bytes came"
        ) from None
    except ClientDisconnect:
        raise ClientDisconnected(f"client disconnected after sending {size} bytes of the body") from None
    return b"".join(chunks)


def parse_body(body: bytes, model: type[BodyModel]) -> BodyModel:
    """A JSON body as `model`: MalformedRequest for broken JSON or a non-object, else InvalidRequest naming the
    field (its value is never echoed: it may be anything)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise request_error(exc, code_of=lambda problem: _FIELD_ERROR_CODES.get(problem.kind, "invalid_value")) \
            from None


def client_request_id(request: Request) -> str | None:
    """X-Request-Id from the client when it is safe to log and echo, else None."""
    value = request.headers.get("x-request-id")
    return value if value is not None and _REQUEST_ID.match(value) else None


async def require_admin(request: Request) -> None:
    """Admin endpoints need `Authorization: Bearer <admin_token>`; they are off when no token is set."""
    token = request.app.state.service.settings.admin_token
    if token is None:
        raise AdminDisabled("admin endpoints are off: no admin_token is configured")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise Unauthorized("admin endpoints need the header 'Authorization: Bearer <admin_token>'")


def result_headers(result: RankResult) -> dict[str, str]:
    """What every scoring door tells the client beside the body: who served it, and where the time went."""
    return {
        "X-Request-Id": result.request_id,
        "X-Model-Name": result.model_name,
        "X-Model-Version": result.model_version,
        "X-Variant": result.variant.value,
        "X-Config-Generation": str(result.config_generation),
        "Server-Timing": result.times.server_timing(),
    }
