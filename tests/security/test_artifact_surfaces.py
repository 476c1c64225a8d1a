"""Hostile artifacts through the real entry points: a running server's /admin/reload answers 409 with one line
and keeps serving, `ranker analyze` and `ranker config set` exit nonzero with one line; no payload runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.cli import main
from service.features.schema import FeatureSchema
from service.store.manifest import MANIFEST_FILE
from tests.api.conftest import ADMIN_HEADERS, ADMIN_TOKEN, rank_body
from tests.api.live_server import REPO_ROOT, LiveServer
from tests.conftest import SMALL_MODEL_NAME
from tests.security.hostile_artifacts import edit_program, plant, shell_expression, symbolic_sizes, write_file

DEEP = 100_000
CLI_TIMEOUT_S = 300


@dataclass
class HostileStore:
    root: Path
    marker: Path  # what the planted shell command would create
    analyze: subprocess.Popen[str]  # `ranker analyze` of v9, started at once: it overlaps the server's start-up


@pytest.fixture(scope="module")
def hostile_store(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileStore]:
    """A private store: v1 as trained, v9 whose symbolic size runs a shell command, v10 whose model.json nests
    100,000 deep."""
    root = tmp_path_factory.mktemp("hostile_store")
    marker = root / "pwned"
    model_dir = root / SMALL_MODEL_NAME
    plant(store / SMALL_MODEL_NAME / "v1", model_dir / "v1")
    shell = plant(store / SMALL_MODEL_NAME / "v1", model_dir / "v9")
    edit_program(shell, lambda program: next(symbolic_sizes(program)).update(expr_str=shell_expression(marker)))
    deep = plant(store / SMALL_MODEL_NAME / "v1", model_dir / "v10")
    write_file(deep, MANIFEST_FILE, b"[" * DEEP + b"]" * DEEP)
    analyze = subprocess.Popen([sys.executable, "-m", "service.cli", "analyze", str(model_dir / "v9"), "--n", "10"],
                               cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    yield HostileStore(root, marker, analyze)
    if analyze.poll() is None:
        analyze.kill()
        analyze.communicate()


def test_admin_reload_of_a_hostile_version_answers_409_and_keeps_serving(
    hostile_store: HostileStore, schema: FeatureSchema, tmp_path: Path
) -> None:
    root, marker = hostile_store.root, hostile_store.marker
    env = {"RANKER_MODEL_STORE": str(root), "RANKER_MODEL_VERSION": "v1", "RANKER_ADMIN_TOKEN": ADMIN_TOKEN,
           "RANKER_WARMUP_CANDIDATES": "[1, 16]", "RANKER_ANALYSIS_CANDIDATES": "100", "RANKER_TORCH_THREADS": "1",
           "RANKER_CONFIG_POLL_S": "0", "RANKER_DRAIN_DELAY_S": "0"}
    with LiveServer(env, log_path=tmp_path / "server.log") as server:
        for version, problem in (("v9", "characters outside"), ("v10", "nests deeper than")):
            response = httpx.post(f"{server.url}/admin/reload", json={"version": version}, headers=ADMIN_HEADERS,
                                  timeout=120)
            assert response.status_code == 409, (version, response.text)
            error = response.json()["error"]
            assert error["code"] == "model_rejected" and problem in error["message"], error
            assert "\n" not in error["message"] and "Traceback" not in error["message"]
            served = httpx.post(f"{server.url}/rank", json=rank_body(schema, n=5), timeout=60)
            assert served.status_code == 200 and served.headers["x-model-version"] == "v1"
    assert not marker.exists()
    assert "Traceback" not in server.log()


def test_ranker_analyze_of_a_hostile_artifact_exits_with_one_line(hostile_store: HostileStore) -> None:
    """The real command line, as an operator runs it: exit status, everything it writes."""
    stdout, stderr = hostile_store.analyze.communicate(timeout=CLI_TIMEOUT_S)
    assert hostile_store.analyze.returncode != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "characters outside" in lines[0] and "Traceback" not in stderr, stderr
    assert not stdout.strip()
    assert not hostile_store.marker.exists()


def test_ranker_config_set_to_a_hostile_version_exits_with_one_line(
    hostile_store: HostileStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process (the command's own code; the process start is what the analyze test covers)."""
    monkeypatch.setenv("RANKER_MODEL_STORE", str(hostile_store.root))
    with pytest.raises(SystemExit) as exited:
        main(["config", "set", "--version", "v10"])
    message = str(exited.value.code)
    assert not isinstance(exited.value.code, int) or exited.value.code != 0  # a message exits with status 1
    assert "\n" not in message and "nests deeper than" in message, message
    assert not capsys.readouterr().err.strip()
    assert not (hostile_store.root / SMALL_MODEL_NAME / "serving.json").exists()


def test_ranker_serve_refuses_a_hostile_version_at_start_up_in_one_line(hostile_store: HostileStore) -> None:
    """`ranker serve` verifies the configured version fully before any worker starts (the check serve() runs)."""
    from service.api.server import _check_model_exists
    from service.serving.settings import Settings

    settings = Settings(model_store=hostile_store.root, model_name=SMALL_MODEL_NAME, model_version="v9")
    with pytest.raises(SystemExit) as exited:
        _check_model_exists(settings)
    message = str(exited.value.code)
    assert message.startswith("cannot serve: ") and "characters outside" in message and "\n" not in message
    assert not hostile_store.marker.exists()
