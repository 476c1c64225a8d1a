"""Admin actions behind the bearer token: roll out a model version, switch the variant / A/B split.

Both write the next generation of the fleet's serving config (model_store/<name>/serving.json), which every
worker of every replica applies within RANKER_CONFIG_POLL_S, and apply it in the answering process at once.
"""

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
    """Build and verify a version here, then publish it to the fleet and swap; a bad artifact is refused (409)."""
    previous = state.runtime.serving
    try:
        version = body.version if body and body.version else state.config.latest_version()  # pinned for the fleet
        active = await asyncio.to_thread(state.config.publish, {"version": version})
    except ServiceError:
        state.metrics.reloads.labels(outcome="refused").inc()
        raise
    serving = active.serving
    return {"status": "reloaded", "name": serving.name, "version": serving.version,
            "previous_version": previous.version, "loaded_at": serving.loaded_at, "generation": active.generation}


@router.post("/variant")
async def switch_variant(body: VariantSwitch, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    """Set the default variant and the A/B split for the fleet (every variant is already built and warmed)."""
    changes = {"variant": body.variant, "ab_split": body.ab_split or {}}
    active = await asyncio.to_thread(state.config.publish, changes)  # InvalidRequest for unusable weights
    return {"status": "switched", **active.router.to_dict(), "generation": active.generation}
