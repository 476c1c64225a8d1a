"""Shared request-time dependencies: the service's state, the bounded body reader and the admin check."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field

from fastapi import Request

from service.serving.admission import InferencePool
from service.serving.codec import REQUEST_ID_PATTERN
from service.serving.config_watch import ConfigWatcher
from service.serving.errors import AdminDisabled, PayloadTooLarge, Unauthorized
from service.serving.metrics import ServiceMetrics
from service.serving.runtime import ModelRuntime
from service.serving.scorer import RequestScorer
from service.serving.settings import Settings
from service.serving.shadow import ShadowComparator

_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


@dataclass
class ServiceState:
    """Everything a handler may touch, built once per app by create_app (at `app.state.service`)."""

    settings: Settings
    runtime: ModelRuntime
    pool: InferencePool
    shadow: ShadowComparator
    metrics: ServiceMetrics
    scorer: RequestScorer
    config: ConfigWatcher
    draining: bool = field(default=False)


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def client_request_id(request: Request) -> str | None:
    """X-Request-Id from the client when it is safe to log and echo, else None."""
    value = request.headers.get("x-request-id")
    return value if value is not None and _REQUEST_ID.match(value) else None


def require_admin(request: Request) -> None:
    """Admin endpoints need `Authorization: Bearer <admin_token>`; they are off when no token is set."""
    token = get_state(request).settings.admin_token
    if token is None:
        raise AdminDisabled("admin endpoints are off: no admin_token is configured")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise Unauthorized("admin endpoints need the header 'Authorization: Bearer <admin_token>'")
