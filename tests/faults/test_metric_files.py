"""The multiprocess metric files of a worker that died without shutting down (service/serving/metrics.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.serving.metrics import MULTIPROC_ENV, ServiceMetrics, reap_dead_processes
from tests.api.metrics_text import parse_metrics, value

# A worker that counts one request, holds three in flight, serves v1, then dies by SIGKILL.
_DYING_WORKER = """
import os, signal
from service.serving.metrics import ServiceMetrics
metrics = ServiceMetrics()
metrics.requests.labels(model="default", variant="mari", status="200").inc()
metrics.in_flight.inc(3)
metrics.set_model(None, ("default", "v1", "mari"))
metrics.set_config_generation("default", 4)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_workers_live_gauges_are_dropped_and_its_counters_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path), "PYTHONPATH": str(repo)}
    worker = subprocess.run([sys.executable, "-c", _DYING_WORKER], cwd=repo, env=env)
    assert worker.returncode < 0  # killed
    assert reap_dead_processes() == [worker_pid(tmp_path)]
    samples = parse_metrics(ServiceMetrics().exposition()[0].decode())
    assert value(samples, "ranker_requests_in_flight") == 0
    assert value(samples, "ranker_model_info", name="default", version="v1", variant="mari") == 0
    assert not [labels for name, labels in samples if name == "ranker_config_generation"]
    assert value(samples, "ranker_requests_total", model="default", variant="mari", status="200") == 1


def worker_pid(directory: Path) -> int:
    (counter,) = directory.glob("counter_*.db")
    return int(counter.stem.split("_")[1])
