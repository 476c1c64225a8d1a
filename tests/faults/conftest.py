"""Fault tests: real `ranker serve` processes (tests/api/live_server.py) under load, then faults.

Every scenario asserts that nothing is lost (each request answered 200 or a documented 4xx/503; a transport
error only where the fault itself cuts a connection, e.g. the requests a killed worker was serving) and that
the metrics agree with the client afterwards (nothing in flight, request counters equal to what it saw).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.api.conftest import ADMIN_TOKEN
from tests.conftest import SMALL_MODEL_NAME


def fault_env(store: Path, **extra: str) -> dict[str, str]:
    """A small, quick server: short warm-up, one torch thread, no shadow, no drain delay unless asked."""
    env = {
        "RANKER_MODEL_STORE": str(store), "RANKER_ADMIN_TOKEN": ADMIN_TOKEN, "RANKER_WARMUP_CANDIDATES": "[1, 16]",
        "RANKER_ANALYSIS_CANDIDATES": "100", "RANKER_TORCH_THREADS": "1", "RANKER_MAX_CANDIDATES": "1000",
        "RANKER_QUEUE_TIMEOUT_S": "30", "RANKER_CONFIG_POLL_S": "1", "RANKER_DRAIN_DELAY_S": "0",
        "RANKER_GRACEFUL_SHUTDOWN_S": "20", "RANKER_LOG_LEVEL": "info",
    }
    env.update(extra)
    return env


def store_with(store: Path, root: Path, versions: tuple[str, ...]) -> Path:
    """A private store holding only `versions` of the session's small model (tests add or reload others)."""
    for version in versions:
        shutil.copytree(store / SMALL_MODEL_NAME / version, root / SMALL_MODEL_NAME / version)
    return root


@pytest.fixture
def add_version(store: Path):
    """Copy a version of the session's model into a private store (a version published while serving)."""
    def add(target: Path, version: str) -> None:
        shutil.copytree(store / SMALL_MODEL_NAME / version, target / SMALL_MODEL_NAME / version)
    return add
