"""Admin actions behind the bearer token: roll out a model version, switch the variant / A/B split.

Both write the next generation of the fleet config (model_store/<name>/serving.json), which every
worker of every replica applies within RANKER_CONFIG_POLL_S, and apply it in the answering process at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from service.api.deps import ADMIN_MAX_BODY_BYTES, ServiceState, get_state, parse_body, read_body, require_admin
from service.api.schemas import ADMIN_ERRORS, ReloadRequest, VariantSwitch, json_request_body
from service.serving.errors import ServiceError
from service.serving.metrics import UNKNOWN_MODEL

ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminBearer": []}]
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], responses=ADMIN_ERRORS)


async def _read(request: Request, state: ServiceState, *, optional: bool = False) -> bytes:
    return await read_body(request, ADMIN_MAX_BODY_BYTES, state.settings.body_read_timeout_s, optional=optional)


@router.post("/reload", openapi_extra={"requestBody": json_request_body("ReloadRequest", required=False),
                                       "security": ADMIN_SECURITY})
async def reload_model(request: Request, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    """Build and verify a version of a model (`model`, else the default) here, then publish it to the fleet and
    swap; a bad artifact is refused (409), a model not served here is a 404."""
    model_label = UNKNOWN_MODEL  # until the body names a served model: never the client's string
    try:  # every refusal counts, a bad body as much as a bad artifact
        raw = await _read(request, state, optional=True)
        body = parse_body(raw, ReloadRequest) if raw else ReloadRequest(model=None, version=None)
        host = state.host(body.model)
        model_label = host.name
        previous = host.runtime.serving
        version = body.version or host.config.latest_version()  # pinned for the fleet
        # the fleet serves this one version: a canary in progress ends (as `ranker config set --promote`)
        active = await asyncio.to_thread(host.config.publish, {"version": version, "versions": {}, "labels": {}})
    except ServiceError:
        state.metrics.reloads.labels(model=model_label, outcome="refused").inc()
        raise
    serving = active.serving
    return {"status": "reloaded", "name": serving.name, "version": serving.version,
            "previous_version": previous.version, "loaded_at": serving.loaded_at, "generation": active.generation}


@router.post("/variant", openapi_extra={"requestBody": json_request_body("VariantSwitch"),
                                        "security": ADMIN_SECURITY})
async def switch_variant(request: Request, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    """Set the default variant and the A/B split of a model (`model`, else the default) for the fleet (every
    variant is already built and warmed)."""
    body = parse_body(await _read(request, state), VariantSwitch)  # 422 naming the field for unusable weights
    host = state.host(body.model)
    changes = {"variant": body.variant, "ab_split": body.ab_split or {}}
    active = await asyncio.to_thread(host.config.publish, changes)
    return {"status": "switched", "model": host.name, **active.router.to_dict(), "generation": active.generation}
