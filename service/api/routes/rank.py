"""POST /rank (the default model) and POST /rank/{model} (any served model)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.deps import ServiceState, client_request_id, read_body, result_headers, state_of
from service.api.errors import status_of
from service.api.schemas import RANK_ERRORS, RANK_MODEL_ERRORS, RANK_REQUEST_BODY, RankResponse
from service.serving.errors import ServiceError
from service.serving.metrics import UNKNOWN_MODEL

router = APIRouter(tags=["ranking"])


@router.post(
    "/rank",
    response_model=RankResponse,
    responses=RANK_ERRORS,
    openapi_extra={"requestBody": RANK_REQUEST_BODY},
)
async def rank_candidates(request: Request) -> Response:
    """Score N candidates for one user (columnar or row-wise body) and order them by final score."""
    return await rank(request, state_of(request), None)


@router.post(
    "/rank/{model}",
    response_model=RankResponse,
    responses=RANK_MODEL_ERRORS,
    openapi_extra={"requestBody": RANK_REQUEST_BODY},
)
async def rank_candidates_with_model(model: str, request: Request) -> Response:
    """As POST /rank, scored by model `model` (a key of GET /v1/models' `models`); 404 for one not served."""
    return await rank(request, state_of(request), model)


async def rank(request: Request, state: ServiceState, model: str | None) -> Response:
    """POST /rank's work for model `model` (None: the default); raises the serving core's errors. Called by the
    routes above and by the scoring routes' short way through the ASGI stack (service/api/scoring_path.py)."""
    model_label, variant, status = UNKNOWN_MODEL, "none", 500  # labels: served names only, never the client's
    state.metrics.in_flight.inc()
    try:
        host = state.host(model)
        model_label = host.name
        body = await read_body(request, state.settings.max_body_bytes, state.settings.body_read_timeout_s)
        result = await host.scorer.score(body, client_request_id(request))
        variant, status = result.variant.value, 200
        headers = result_headers(result)
        return Response(result.body, media_type="application/json", headers=headers)
    except ServiceError as exc:
        status = status_of(exc)
        raise
    finally:
        state.metrics.in_flight.dec()
        state.metrics.requests.labels(model=model_label, variant=variant, status=str(status)).inc()
