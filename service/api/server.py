"""`ranker serve`: run the service under uvicorn with graceful shutdown.

Host, port and worker count are arguments; every other setting comes from Settings (RANKER_* environment
variables or RANKER_CONFIG_FILE), and the model version, variant, A/B split and shadow from the store's
serving.json when it exists. With several workers each process loads its own copy of the model, and
metrics switch to prometheus_client's multiprocess mode through a fresh PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import uvicorn

from service.api.app import create_app
from service.api.http_limits import uvicorn_options
from service.api.supervisor import WorkerSupervisor
from service.api.worker_app import WorkerApp
from service.serving.config_watch import FROM_ENVIRONMENT, starting_config
from service.serving.fleet_config import FleetConfigError
from service.serving.fleet_state import create_fleet_dir
from service.serving.metrics import MULTIPROC_ENV
from service.serving.settings import Settings
from service.store.artifact import load_artifact
from service.store.manifest import ArtifactError
from service.store.versions import check_component, resolve_version

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def serve(
    host: str | None = None, port: int | None = None, workers: int | None = None, settings: Settings | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish (up to graceful_shutdown_s) before exit.

    On SIGTERM every worker drains first: /readyz answers 503 and requests are still served for drain_delay_s.

    Defaults: 127.0.0.1, port 8000, one worker.
    """
    host = DEFAULT_HOST if host is None else host
    port = DEFAULT_PORT if port is None else port
    workers = 1 if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    settings = Settings() if settings is None else settings  # a bad configuration stops here, before any worker
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _check_model_exists(settings)
    common = dict(host=host, port=port, log_level=settings.log_level, access_log=settings.access_log,
                  timeout_graceful_shutdown=settings.graceful_shutdown_s, **uvicorn_options(settings))
    if workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    metrics_dir, owned = _prepare_multiprocess_dir()
    fleet_dir = create_fleet_dir()  # what a respawned worker needs to serve what its siblings serve
    # The workers get these settings as they are (service/api/worker_app.py), a respawned one too, not by
    # re-reading an environment that this process would have to rewrite first.
    worker_settings = _for_workers(settings, workers)
    config = uvicorn.Config(WorkerApp.of(worker_settings), factory=True, workers=workers, **common)
    try:
        WorkerSupervisor(config, sockets=[config.bind_socket()]).run()
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(fleet_dir, ignore_errors=True)
        if owned:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _check_model_exists(settings: Settings) -> None:
    """Fail fast with one clear line when the configured model (serving.json's version when there is one, else
    RANKER_MODEL_VERSION) or serving.json itself is unusable: the artifact is loaded and verified here as the
    workers will, so a broken or hostile one stops start-up with its one-line reason, not a worker traceback."""
    model_dir = settings.model_store / settings.model_name
    try:
        version = starting_config(settings)[0].version
        load_artifact(resolve_version(model_dir / check_component("version", version) if version else model_dir))
    except (ArtifactError, FleetConfigError) as exc:
        raise SystemExit(f"cannot serve: {exc}") from None


def _for_workers(settings: Settings, workers: int) -> Settings:
    """`settings` as every worker runs them: torch threads shared out between the workers unless set (W
    workers must not each take every core), and, with neither serving.json nor RANKER_MODEL_VERSION, the latest
    version pinned now, so that a worker respawned later (after a crash) serves what its siblings serve, not a
    version added since. With a serving.json the workers follow the file."""
    update: dict[str, object] = {}
    if settings.torch_threads is None:
        update["torch_threads"] = max(1, (os.cpu_count() or 1) // workers)
    config, source = starting_config(settings)
    if source == FROM_ENVIRONMENT and config.version is None:
        version = resolve_version(settings.model_store / settings.model_name).name
        update["model_version"] = version
        logger.info("no fleet config and no RANKER_MODEL_VERSION: every worker serves %s, the latest now", version)
    return settings.model_copy(update=update)


def _prepare_multiprocess_dir() -> tuple[Path, bool]:
    """A clean PROMETHEUS_MULTIPROC_DIR for this run; returns it and whether serve() created it."""
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # files of a previous run would be summed into this one
            stale.unlink()
        return path, False
    path = Path(tempfile.mkdtemp(prefix="ranker-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path, True
