"""Smoke test of the load-test runner: real `ranker serve`, real headless locust, a small model in a tmp store."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.small_artifacts import save_small_mmoe

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("model_store")
    save_small_mmoe(store, "small")
    return store / "small"


def run_load_test(model: Path, tmp_path: Path, duration: str, p99_bound_ms: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "loadtest.run", "--model", str(model), "--variants", "mari",
        "--users", "2", "--spawn-rate", "2", "--duration", duration, "--p99-bound-ms", p99_bound_ms,
        "--bodies", "6", "--out", str(tmp_path / "docs"), "--results-dir", str(tmp_path / "results"),
        # a short start-up: warm two small batch sizes, FLOPs report at N = 100, nothing compiled; and a quick
        # stop: no SIGTERM drain delay (the runner stops the server after locust has finished)
        "--server-env", "RANKER_WARMUP_CANDIDATES=[1, 16]", "--server-env", "RANKER_ANALYSIS_CANDIDATES=100",
        "--compile", "off", "--server-env", "RANKER_DRAIN_DELAY_S=0",
    ]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def aggregated_row(stats_csv: Path) -> dict[str, str]:
    with open(stats_csv, newline="") as handle:
        return next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")


def test_load_run_against_real_server_passes_and_writes_csvs_and_report(model: Path, tmp_path: Path) -> None:
    done = run_load_test(model, tmp_path, "4s", "10000")  # long enough for both users to send; volume is not checked

    assert done.returncode == 0, done.stdout + done.stderr
    total = aggregated_row(tmp_path / "results" / "mari_u2_stats.csv")
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0
    report = (tmp_path / "docs" / "loadtest.md").read_text()
    assert "| mari |" in report and "infer" in report
    assert (tmp_path / "docs" / "figures" / "loadtest_summary.png").stat().st_size > 0
    point = json.loads((tmp_path / "results" / "results.json").read_text())["points"][0]
    assert point["exit_code"] == 0 and point["candidates_per_s"] > 0
    assert point["server_statuses"] == {"200": int(total["Request Count"])}  # server saw what locust sent


def test_load_run_exits_non_zero_when_p99_bound_is_impossible(model: Path, tmp_path: Path) -> None:
    done = run_load_test(model, tmp_path, "3s", "0.001")

    assert done.returncode == 1, done.stdout + done.stderr
    summary = json.loads((tmp_path / "results" / "mari_u2_summary.json").read_text())
    assert summary["failures"] == 0 and summary["requests"] > 0
    assert any("p99" in reason for reason in summary["failed_because"])
    assert "p99" in done.stderr
