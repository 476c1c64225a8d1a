"""create_app(settings): wiring only. The model is loaded, built and warmed during start-up (fail fast)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.deps import ServiceState
from service.api.errors import install_error_handlers
from service.api.routes import admin, health, metrics, models, rank
from service.serving.admission import InferencePool
from service.serving.config_watch import ConfigWatcher
from service.serving.metrics import ServiceMetrics, mark_process_dead
from service.serving.runtime import ModelRuntime
from service.serving.scorer import RequestScorer
from service.serving.settings import Settings
from service.serving.shadow import ShadowComparator

logger = logging.getLogger(__name__)

TITLE = "MaRI Serve"
DESCRIPTION = (
    "Online ranking: one user and N candidates in, per-task scores and an order out. The same trained model "
    "serves as VanI, UOI or MaRI (derived by graph transformation at load time), chosen by config or A/B bucket."
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI app for `settings` (read from the environment/config file when None)."""
    settings = settings or Settings()
    service_metrics = ServiceMetrics()
    runtime = ModelRuntime(settings)
    pool = InferencePool(settings.inference_concurrency, settings.max_queued_requests, settings.queue_timeout_s,
                         settings.retry_after_s)
    shadow = ShadowComparator(settings.shadow_variant, settings.shadow_sample_rate, settings.shadow_queue_size,
                              settings.tolerance, service_metrics)
    scorer = RequestScorer(runtime, pool, shadow, service_metrics)
    config = ConfigWatcher(settings, runtime, shadow, service_metrics)
    state = ServiceState(settings, runtime, pool, shadow, service_metrics, scorer, config)

    app = FastAPI(title=TITLE, description=DESCRIPTION, version="1", lifespan=_lifespan)
    app.state.service = state
    install_error_handlers(app)
    for module in (rank, health, models, admin, metrics):
        app.include_router(module.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def create_app_from_environment() -> FastAPI:
    """Factory for uvicorn workers (`--factory`): settings from RANKER_* variables and RANKER_CONFIG_FILE."""
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(settings)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    if state.settings.torch_threads is not None:
        torch.set_num_threads(state.settings.torch_threads)  # before the first inference (the warm-up)
    # serving.json when it exists, else the RANKER_* settings; raises: start-up fails, the process exits
    serving = await asyncio.to_thread(state.config.start_up)
    state.shadow.start()
    state.config.start()
    logger.info("ready: model %s/%s, routing %s, serving config %s", serving.name, serving.version,
                state.runtime.router.to_dict(), state.config.status())
    try:
        yield
    finally:
        state.draining = True  # uvicorn has already let in-flight requests finish
        state.config.stop()
        state.shadow.stop()
        state.pool.shutdown()
        mark_process_dead()


def _openapi(app: FastAPI) -> dict[str, Any]:
    """Generated schema plus the two POST /rank request forms (documented, validated per model at run time)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(rank.RANK_REQUEST_SCHEMAS)
        app.openapi_schema = schema
    return app.openapi_schema
