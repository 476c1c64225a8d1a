"""The Open Inference Protocol (KServe V2) over HTTP, beside POST /rank: health, metadata and infer.

HTTP only: the protocol's bodies are read and written by service/serving/v2_codec.py and v2_metadata.py, and
scored by the same scorer as /rank (admission, A/B routing, batching, shadow, metrics). Errors are answered in
the protocol's shape {"error": "..."} by service/api/errors.py. Not in /openapi.json: the protocol documents
itself (GET /v2, GET /v2/models/{name}), and its binary bodies are not JSON Schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from service.api.deps import (
    JSON_MEDIA_TYPE,
    ServiceState,
    client_request_id,
    get_state,
    read_body,
    result_headers,
    state_of,
)
from service.api.errors import status_of
from service.serving.errors import NotReady, ServiceError, UnsupportedMediaType
from service.serving.metrics import UNKNOWN_MODEL
from service.serving.serving_model import ServingModel
from service.serving.v2_codec import V2Door
from service.serving.v2_metadata import check_model, model_metadata, server_metadata

router = APIRouter(prefix="/v2", tags=["open inference protocol"], include_in_schema=False)

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_MEDIA_TYPE = "application/octet-stream"
V2_MEDIA_TYPES = (JSON_MEDIA_TYPE, BINARY_MEDIA_TYPE)  # or none: tritonclient sends no Content-Type


@router.get("/health/live")
async def get_live() -> Response:
    """Live: the process answers."""
    return Response(status_code=200)


@router.get("/health/ready")
async def get_ready(state: ServiceState = Depends(get_state)) -> Response:
    """Ready: as /readyz (every model loaded, every variant built and warmed, not draining)."""
    _check_ready(state)
    return Response(status_code=200)


@router.get("")
async def get_server_metadata() -> dict[str, Any]:
    """Server name, version and supported extensions."""
    return server_metadata()


@router.get("/models/{name}")
async def get_model_metadata(name: str, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    """The model's inputs (one per feature) and outputs (one per task, and final_scores)."""
    return _metadata(state, name, None)


@router.get("/models/{name}/versions/{version}")
async def get_version_metadata(name: str, version: str, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    """As GET /v2/models/{name}, for the loaded version only."""
    return _metadata(state, name, version)


@router.get("/models/{name}/ready")
async def get_model_ready(name: str, state: ServiceState = Depends(get_state)) -> Response:
    """200 when the server is ready and serves this model."""
    _check_ready(state, name)
    check_model(state.host(name).runtime.serving, name, None)
    return Response(status_code=200)


@router.get("/models/{name}/versions/{version}/ready")
async def get_version_ready(name: str, version: str, state: ServiceState = Depends(get_state)) -> Response:
    """200 when the server is ready and serves this model at this version."""
    _check_ready(state, name)
    check_model(_version_serving(state, name, version), name, version)
    return Response(status_code=200)


@router.post("/models/{name}/infer")
async def infer(name: str, request: Request) -> Response:
    """Score N candidates for one user given as named input tensors (JSON or binary tensor data)."""
    return await infer_scores(request, state_of(request), name, None)


@router.post("/models/{name}/versions/{version}/infer")
async def infer_version(name: str, version: str, request: Request) -> Response:
    """As POST /v2/models/{name}/infer, for the loaded version only."""
    return await infer_scores(request, state_of(request), name, version)


def _check_ready(state: ServiceState, name: str | None = None) -> None:
    """NotReady while draining or until every model (or model `name`, when given) is loaded."""
    if state.draining:
        raise NotReady("shutting down")
    if not (state.hosts.ready if name is None else state.host(name).ready):
        raise NotReady("no model is loaded yet")


def _version_serving(state: ServiceState, name: str, version: str | None) -> ServingModel:
    """Model `name`'s loaded `version` when it serves (a canary's versions too), else its primary (which then
    refuses the version by name); UnknownModel for a model not served here."""
    active = state.host(name).runtime.active
    return active.serving if version is None else active.serving_versions().get(version, active.serving)


def _metadata(state: ServiceState, name: str, version: str | None) -> dict[str, Any]:
    serving = _version_serving(state, name, version)
    check_model(serving, name, version)
    return model_metadata(serving)


async def infer_scores(request: Request, state: ServiceState, name: str, version: str | None) -> Response:
    """POST /v2/models/{name}[/versions/{version}]/infer's work; raises the serving core's errors. Called by the
    routes above and by the scoring routes' short way (service/api/scoring_path.py)."""
    model_label, variant, status = UNKNOWN_MODEL, "none", 500  # labels: served names only, never the client's
    state.metrics.in_flight.inc()
    try:
        host = state.host(name)
        model_label = host.name
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise UnsupportedMediaType(f"Content-Encoding {encoding[:40]!r} is not supported; send the body "
                                       "uncompressed")
        body = await read_body(request, state.settings.max_body_bytes, state.settings.body_read_timeout_s,
                               media_types=V2_MEDIA_TYPES)
        door = V2Door(name, version, request.headers.get(HEADER_LENGTH))
        result = await host.scorer.score(body, client_request_id(request), door)
        variant, status = result.variant.value, 200
        headers = result_headers(result)
        media_type = JSON_MEDIA_TYPE
        if result.json_length is not None:
            headers[HEADER_LENGTH] = str(result.json_length)
            media_type = BINARY_MEDIA_TYPE
        return Response(result.body, media_type=media_type, headers=headers)
    except ServiceError as exc:
        status = status_of(exc, v2=True)
        raise
    finally:
        state.metrics.in_flight.dec()
        state.metrics.v2_requests.labels(model=model_label, variant=variant, status=str(status)).inc()
