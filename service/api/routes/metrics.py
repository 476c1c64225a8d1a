"""GET /metrics (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import PlainTextResponse

from service.api.deps import ServiceState, get_state

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=PlainTextResponse)
async def get_metrics(state: ServiceState = Depends(get_state)) -> Response:
    """Prometheus metrics of every worker process."""
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)
