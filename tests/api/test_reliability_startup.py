"""Start-up and command-line faults (issue 12): unsafe A/B weights and a short admin token stop `ranker serve` in one
line that never prints the token; `ranker example-request` outside the repository root; `make run` and SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from service.serving.settings import Settings
from tests.api.conftest import MODEL_NAME
from tests.api.live_server import REPO_ROOT, free_port

CLI = [sys.executable, "-m", "service.cli"]
UNSAFE_SPLITS = ['{"mari": NaN}', '{"mari": Infinity}', '{"mari": 1e308, "vani": 1e308}', '{"mari": 1e400}']


def run_cli(args: list[str], env: dict[str, str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.run([*CLI, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("split", UNSAFE_SPLITS)
def test_settings_refuse_non_finite_or_overflowing_ab_split_weights(split: str, monkeypatch) -> None:
    monkeypatch.setenv("RANKER_AB_SPLIT", split)
    with pytest.raises(ValidationError, match="ab_split"):
        Settings()


def test_serve_refuses_an_overflowing_ab_split_at_start_up_in_one_line(store: Path) -> None:
    result = run_cli(["serve", "--port", str(free_port())],
                     {"RANKER_MODEL_STORE": str(store), "RANKER_AB_SPLIT": '{"mari": 1e308, "vani": 1e308}'})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "RANKER_AB_SPLIT" in result.stderr


def test_serve_start_up_error_names_a_short_admin_token_without_printing_it(store: Path) -> None:
    token = "tok-9f3Xq2Lm"  # 12 characters: under the 16 required
    result = run_cli(["serve", "--port", str(free_port())],
                     {"RANKER_MODEL_STORE": str(store), "RANKER_ADMIN_TOKEN": token})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert token not in output
    assert "RANKER_ADMIN_TOKEN" in output and "16 characters" in output
    assert "Traceback" not in output


def test_example_request_outside_the_repository_root_exits_in_one_line_naming_the_fix(
    store: Path, tmp_path: Path
) -> None:
    lost = run_cli(["example-request", "--n", "2"], {}, cwd=tmp_path)
    assert lost.returncode != 0 and "Traceback" not in lost.stderr
    assert "--model" in lost.stderr and "RANKER_MODEL_STORE" in lost.stderr
    found = run_cli(["example-request", "--n", "2"], {"RANKER_MODEL_STORE": str(store)}, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)["candidates"]) == 2


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_stops_the_server_on_sigterm(store: Path) -> None:
    """SIGTERM to `make run` (what a process manager or `kill` sends) must stop the server it started."""
    port = free_port()
    env = {**os.environ, "RANKER_WARMUP_CANDIDATES": "[1, 16]", "RANKER_ANALYSIS_CANDIDATES": "100",
           "RANKER_TORCH_THREADS": "1", "RANKER_CONFIG_POLL_S": "0", "RANKER_DRAIN_DELAY_S": "0",
           "RANKER_COMPILE": "off"}
    env.pop("MAKEFLAGS", None)
    assert (store / MODEL_NAME).is_dir()
    # -o: never rebuild the venv here (its stamps may be older than pyproject.toml on a developer's machine)
    make = subprocess.Popen(["make", "-o", ".venv/.installed", "-o", ".venv/.installed-serve", "run",
                             f"STORE={store}", f"PORT={port}"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert _ready(f"http://127.0.0.1:{port}", make, 180), "make run did not serve"
        make.send_signal(signal.SIGTERM)
        make.wait(60)
        assert _port_closed(port, 30), "the server outlived make"
    finally:
        if make.poll() is None or not _port_closed(port, 0):
            os.killpg(make.pid, signal.SIGKILL)  # our own process group: make and whatever it started
        make.wait()


def _ready(url: str, process: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def _port_closed(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0)
        except httpx.TransportError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.3)
