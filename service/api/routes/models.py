"""GET /v1/models: what is loaded (every served model), how it is served and what each variant costs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.encoders import jsonable_encoder

from service.api.deps import ServiceState, get_state
from service.api.schemas import ERROR_RESPONSES
from service.serving.hosts import ModelHost
from service.serving.routing import Auto
from service.serving.runtime import ServingNow

router = APIRouter(tags=["models"])


@router.get("/v1/models", responses={503: ERROR_RESPONSES[503]})
async def get_models(state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    """The default model at the top level, and every served model under `models` with its state: its variants
    (engine reports), fleet config, A/B and shadow, the versions serving (a canary) and how they agree, the `auto`
    choice per request size with every form's measured time, and the FLOPs report."""
    described = _describe(state.host())  # 503 until the default model is loaded
    described["models"] = {host.name: {**_describe(host), "state": _state_of(state, host)} if host.ready
                           else {"name": host.name, "state": _state_of(state, host)} for host in state.hosts}
    return described


def _state_of(state: ServiceState, host: ModelHost) -> str:
    if state.draining:
        return "draining"
    return "ready" if host.ready else "loading"


def _describe(host: ModelHost) -> dict[str, Any]:
    """What one model serves now; NotReady before it is loaded."""
    active = host.runtime.active  # model and routing of one config generation
    serving = active.serving
    settings = host.settings
    described: dict[str, Any] = jsonable_encoder({
        "name": serving.name,
        "version": serving.version,
        "architecture": serving.architecture,
        "source": serving.manifest["source"],
        "user_features": serving.manifest["user_features"],
        "outputs": serving.manifest.get("outputs", {}),
        "path": str(serving.path),
        "loaded_at": serving.loaded_at,
        "tasks": list(serving.tasks),
        "task_weights": serving.manifest["task_weights"],
        "feature_schema": serving.manifest["feature_schema"],
        "training_metrics": serving.manifest.get("metrics", {}),
        "variants": {variant.value: status.to_dict() for variant, status in serving.statuses.items()},
        "config": host.config.status(),
        "routing": active.router.to_dict(),
        "auto": {
            "default": active.router.default is Auto.AUTO,  # auto serves the requests routed to the default
            "measured_s": round(serving.fastest.seconds, 3),
            "by_candidates": serving.fastest.to_dict(),  # warm-up size -> each form's median ms, the fastest
        },
        "shadow": {
            "variant": host.shadow.variant.value if host.shadow.variant else None,
            "sample_rate": host.shadow.sample_rate,
            "queue_size": settings.shadow_queue_size,
            "tolerance": settings.tolerance,
        },
        "versions": _versions(active, host),
        "limits": {
            "max_candidates": settings.max_candidates,
            "max_body_bytes": settings.max_body_bytes,
            "max_id": settings.max_id,
            "sequence_overflow": settings.sequence_overflow,
        },
        "flops": serving.analysis,
        "compile": serving.compilation,
    })
    return described


def _versions(active: ServingNow, host: ModelHost) -> dict[str, Any]:
    """Every version serving (the primary alone without a canary) with its share of users and labels, and the
    running comparison of the versions (this worker process's sample)."""
    shares = active.version_router.shares if active.version_router is not None else {active.serving.version: 1.0}
    return {
        "primary": active.serving.version,
        "serving": {name: {"weight": shares.get(name, 0.0), "path": str(model.path), "loaded_at": model.loaded_at,
                           "labels": sorted(label for label, version in active.labels.items() if version == name)}
                    for name, model in active.serving_versions().items()},
        "compare": {**active.compare.model_dump(), "queue_size": host.settings.shadow_queue_size,
                    "summary": host.versions.summary()},
    }
