"""`ranker serve --workers W` hands each worker its settings (pickled into the spawned process), never by
rewriting this process's environment."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import uvicorn

from service.api import server
from service.api.worker_app import WorkerApp
from service.serving.settings import Settings
from tests.conftest import SMALL_MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_workers_get_the_settings_as_given_through_the_pickle_a_spawned_worker_receives() -> None:
    settings = Settings(admin_token="a-long-enough-admin-token", max_candidates=123, torch_threads=3,
                        variant="uoi", ab_split={"mari": 0.5, "vani": 0.5})
    config = uvicorn.Config(WorkerApp.of(settings), factory=True, workers=2)
    restored = pickle.loads(pickle.dumps(config))  # what uvicorn's Multiprocess does for every worker it starts
    given = Settings(**restored.app.values)  # what the worker builds its app from
    assert given == settings and given.admin_token.get_secret_value() == "a-long-enough-admin-token"


def test_a_worker_unpickles_its_config_without_importing_torch() -> None:
    """A worker answers health pings only after unpickling; importing torch first got workers killed as hung."""
    config = uvicorn.Config(WorkerApp.of(Settings()), factory=True, workers=2)
    probe = ("import pickle, sys; pickle.loads(sys.stdin.buffer.read()); "
             "print(sorted(m for m in ('torch', 'fastapi') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], input=pickle.dumps(config), capture_output=True, timeout=60,
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "[]"


def test_threads_are_shared_out_and_the_latest_version_pinned_without_touching_the_environment(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in ("v1", "v2"):
        shutil.copytree(store / SMALL_MODEL_NAME / version, tmp_path / SMALL_MODEL_NAME / version)
    monkeypatch.delenv("RANKER_MODEL_VERSION", raising=False)
    monkeypatch.delenv("RANKER_TORCH_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    before = dict(os.environ)
    settings = Settings(model_store=tmp_path, model_name=SMALL_MODEL_NAME)
    workers = server._for_workers(settings, 4)
    assert (workers.torch_threads, workers.model_version) == (2, "v2")
    assert dict(os.environ) == before
    # set explicitly, they are kept: a version named by the operator, threads chosen by the operator
    kept = server._for_workers(settings.model_copy(update={"torch_threads": 1, "model_version": "v1"}), 4)
    assert (kept.torch_threads, kept.model_version) == (1, "v1")
