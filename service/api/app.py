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

from service.api.body_budget import BodyBudget, BodyBudgetGuard
from service.api.deps import ServiceState
from service.api.drain import CloseConnectionsWhileDraining, drain_on_sigterm
from service.api.errors import install_error_handlers
from service.api.routes import admin, health, metrics, models, rank, v2
from service.api.routes.docs import install_docs
from service.api.schemas import ReloadRequest, VariantSwitch, model_components, rank_request_components
from service.api.scoring_path import ScoringPath
from service.serving.hosts import ModelHost, ModelHosts
from service.serving.metrics import ServiceMetrics, mark_process_dead, reap_dead_processes
from service.serving.settings import Settings

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
    # ValueError naming RANKER_MODELS / RANKER_MAX_MODELS when more models than allowed would be served
    state = ServiceState(settings, ModelHosts.create(settings, service_metrics), service_metrics)

    app = FastAPI(title=TITLE, description=DESCRIPTION, version="1", lifespan=_lifespan, docs_url=None,
                  redoc_url=None)  # /docs from local assets (routes/docs.py)
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(ScoringPath)  # added first: the innermost, inside the drain and body budget middleware
    app.add_middleware(CloseConnectionsWhileDraining, state=state)
    app.add_middleware(BodyBudgetGuard, budget=BodyBudget(settings.body_budget_bytes, settings.retry_after_s))
    for module in (rank, v2, health, models, admin, metrics):
        app.include_router(module.router)
    install_docs(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def create_app_from_environment() -> FastAPI:
    """Factory for `uvicorn --factory`: settings from RANKER_* variables and RANKER_CONFIG_FILE."""
    return create_worker_app(Settings())


def create_worker_app(settings: Settings) -> FastAPI:
    """The app of one worker process of `ranker serve --workers W`, which hands each worker its settings."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(settings)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    if state.settings.torch_threads is not None:
        torch.set_num_threads(state.settings.torch_threads)  # before the first inference (the warm-up)
    reaped = reap_dead_processes()  # e.g. this worker replaces one killed by SIGKILL: drop its live gauges
    if reaped:
        logger.info("dropped the live gauges of dead worker processes %s", reaped)
    # serving.json when it exists, else the RANKER_* settings; raises: start-up fails, the process exits
    for host in state.hosts:  # every model built before any thread starts: a failure leaves none running
        await asyncio.to_thread(_start_up, host)
    for host in state.hosts:
        host.start()
        serving = host.runtime.serving
        logger.info("ready: model %s/%s, routing %s, fleet config %s", serving.name, serving.version,
                    host.runtime.router.to_dict(), host.config.status())
    restore_sigterm = drain_on_sigterm(state, state.settings.drain_delay_s)
    try:
        yield
    finally:
        state.draining = True  # uvicorn has already let in-flight requests finish
        restore_sigterm()
        for host in state.hosts:
            host.stop()
        mark_process_dead()


def _start_up(host: ModelHost) -> None:
    """Build, verify and warm one model; its failure fails start-up with the model named."""
    try:
        host.start_up()
    except Exception:
        logger.error("model %r could not start; the server does not start", host.name)
        raise


ADMIN_SECURITY_SCHEMES = {"adminBearer": {"type": "http", "scheme": "bearer", "description": "RANKER_ADMIN_TOKEN"}}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """Generated schema plus the request bodies read by hand: the loaded model's own POST /rank request (made
    again when a reload changes the model) and the admin bodies, behind the admin bearer scheme; the served
    models as the values of POST /rank/{model}'s path."""
    state: ServiceState = app.state.service
    codec = state.runtime.active.serving.codec if state.runtime.ready else None
    cached = getattr(app.state, "openapi", None)
    if cached is None or cached[0] is not codec:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(
            {**model_components(ReloadRequest, VariantSwitch), **rank_request_components(codec)}
        )
        components["securitySchemes"] = ADMIN_SECURITY_SCHEMES
        _name_served_models(schema, list(state.hosts.by_name))
        app.state.openapi = (codec, schema)
    schema_now: dict[str, Any] = app.state.openapi[1]
    return schema_now


def _name_served_models(schema: dict[str, Any], names: list[str]) -> None:
    """POST /rank/{model}: the served names are the path's values (anything else is the documented 404)."""
    for parameter in schema["paths"]["/rank/{model}"]["post"]["parameters"]:
        if parameter["name"] == "model":
            parameter["schema"]["enum"] = names
