"""Schemathesis (every check) against a real `ranker serve`: zero server errors, zero undocumented statuses, schema-
valid requests accepted and invalid ones refused (issue 12). Bounded: a fixed seed and MAX_EXAMPLES per operation.

The two rules of POST /rank that JSON Schema cannot state are applied to positive cases by
tests/api/schemathesis_hooks.py; everything else is checked as the document says it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.api.conftest import ADMIN_TOKEN, private_store
from tests.api.live_server import REPO_ROOT, LiveServer
from tests.api.test_reliability_http import reliability_env

MAX_EXAMPLES = 60
SEED = 1
RUN_LIMIT_S = 60.0
HOOKS = "tests.api.schemathesis_hooks"
SCHEMATHESIS = [sys.executable, "-m", "schemathesis.cli"]  # pinned in the dev extras: missing is a failure


def test_schemathesis_all_checks_against_a_real_server(
    store: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    log = tmp_path / "server.log"
    env = reliability_env(private_store(store, tmp_path_factory), RANKER_MAX_CANDIDATES="50")  # admin calls write it
    with LiveServer(env, log_path=log) as server:
        started = time.monotonic()
        result = subprocess.run(
            [*SCHEMATHESIS, "run", f"{server.url}/openapi.json", "--checks", "all",
             "--header", f"Authorization: Bearer {ADMIN_TOKEN}", "--max-examples", str(MAX_EXAMPLES),
             "--seed", str(SEED), "--workers", "1", "--no-color", "--request-timeout", "30",
             # `all` includes a 10 s response-time check: a reload took 10.1 s on a loaded machine. Speed is not
             # what this test asserts; a response must only come within the request timeout.
             "--max-response-time", "30"],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "SCHEMATHESIS_HOOKS": HOOKS},
            capture_output=True, text=True, timeout=300,
        )
        took = time.monotonic() - started
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout, report
    assert "Traceback" not in log.read_text()
    assert took < RUN_LIMIT_S * 2, f"schemathesis took {took:.0f} s"  # a loaded 2-core box gets slack
