"""GET /healthz (live) and GET /readyz (every model loaded, variants built and warmed, not shutting down)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.deps import ServiceState, get_state
from service.api.schemas import ERROR_RESPONSES, Status
from service.serving.errors import NotReady

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Status)
async def get_health() -> Status:
    """Liveness: the process answers."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses={503: ERROR_RESPONSES[503]})
async def get_readiness(state: ServiceState = Depends(get_state)) -> Status:
    """Readiness: every served model is loaded with every variant built and warmed, and the server is not
    draining."""
    if state.draining:
        raise NotReady("shutting down")
    if not state.hosts.ready:
        raise NotReady("no model is loaded yet")
    return Status(status="ready")
