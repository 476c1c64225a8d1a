"""`ranker serve --model PATH` serves that folder from anywhere, and `ranker serve --help` lists every setting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.serving.settings import ENV_PREFIX, Settings, model_location
from tests.api.conftest import MODEL_NAME
from tests.api.live_server import REPO_ROOT, TEST_DEFAULTS, free_port

CLI = [sys.executable, "-m", "service.cli"]
READY_TIMEOUT_S = 300.0


def cli_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any RANKER_* (the flag alone must say which model)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return {**inherited, "PYTHONPATH": str(REPO_ROOT), **TEST_DEFAULTS, "RANKER_WARMUP_CANDIDATES": "[1, 8]",
            "RANKER_ANALYSIS_CANDIDATES": "50", "RANKER_TORCH_THREADS": "1", **extra}


def test_serve_model_flag_serves_a_version_folder_from_another_directory(store: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    # v1, not the latest (v2): the flag pins the version; cwd has no model_store/, so nothing else can be read
    with open(log, "wb") as out:
        server = subprocess.Popen([*CLI, "serve", "--port", str(port), "--model", str(store / MODEL_NAME / "v1")],
                                  cwd=tmp_path, env=cli_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
        assert (models["name"], models["version"]) == (MODEL_NAME, "v1")
        assert Path(models["path"]).resolve() == (store / MODEL_NAME / "v1").resolve()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    assert "Application shutdown complete" in log.read_text()  # a graceful stop (uvicorn exits with the signal)


def test_model_location_of_a_model_folder_leaves_the_version_to_the_latest(store: Path) -> None:
    location = model_location(store / MODEL_NAME)
    assert location == {"RANKER_MODEL_STORE": str(store.resolve()), "RANKER_MODEL_NAME": MODEL_NAME}
    assert Settings(**{k.removeprefix(ENV_PREFIX).lower(): v for k, v in location.items()}).model_path == \
        store.resolve() / MODEL_NAME


def test_serve_model_flag_refuses_a_folder_without_a_model_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run([*CLI, "serve", "--port", str(free_port()), "--model", str(tmp_path)], cwd=tmp_path,
                            env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert "--model" in result.stderr and "model.json" in result.stderr


def test_serve_help_lists_every_setting_with_its_default() -> None:
    result = subprocess.run([*CLI, "serve", "--help"], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--model PATH" in result.stdout
    listed = {line.split(" = ")[0].strip(): line.split(" = ", 1)[1] for line in result.stdout.splitlines()
              if line.startswith("  RANKER_")}
    assert set(listed) == {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert listed["RANKER_MAX_CANDIDATES"] == str(Settings.model_fields["max_candidates"].default)
    assert listed["RANKER_VARIANT"] == "auto" and listed["RANKER_MODEL_VERSION"] == "(unset)"
    assert listed["RANKER_BATCHING"] == "false"  # as the variable would be written


@pytest.mark.parametrize("bad", ["does-not-exist"])
def test_serve_model_flag_names_a_missing_path(bad: str, tmp_path: Path) -> None:
    result = subprocess.run([*CLI, "serve", "--model", str(tmp_path / bad)], cwd=tmp_path, env=cli_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert bad in result.stderr
