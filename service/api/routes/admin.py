"""Admin actions behind the bearer token: reload the model, switch the variant / A/B split."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from service.api.deps import ServiceState, get_state, require_admin
from service.api.schemas import ReloadRequest, VariantSwitch
from service.serving.errors import ServiceError

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.post("/reload")
async def reload_model(
    body: ReloadRequest | None = None, state: ServiceState = Depends(get_state)
) -> dict[str, Any]:
    """Build and warm a model version beside the current one, then swap; a bad artifact is refused (409)."""
    previous = state.runtime.serving
    try:
        serving = await asyncio.to_thread(state.runtime.load, body.version if body else None)
    except ServiceError:
        state.metrics.reloads.labels(outcome="refused").inc()
        raise
    state.metrics.reloads.labels(outcome="ok").inc()
    router_default = state.runtime.router.default.value
    state.metrics.set_model((previous.name, previous.version, router_default),
                            (serving.name, serving.version, router_default))
    return {"status": "reloaded", "name": serving.name, "version": serving.version,
            "previous_version": previous.version, "loaded_at": serving.loaded_at}


@router.post("/variant")
async def switch_variant(body: VariantSwitch, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    """Set the default variant and the A/B split (every variant is already built and warmed)."""
    serving = state.runtime.serving
    previous = state.runtime.router.default.value
    router = state.runtime.set_routing(body.variant, body.ab_split)  # InvalidRequest for unusable weights
    state.metrics.set_model((serving.name, serving.version, previous),
                            (serving.name, serving.version, router.default.value))
    return {"status": "switched", **router.to_dict()}
