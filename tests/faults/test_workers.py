"""Two uvicorn workers under load: kill -9 of one, a reload, then SIGTERM of the server (last: it ends it).

The server starts with neither serving.json nor RANKER_MODEL_VERSION, on a store holding only v1; a test
adds v2 while it serves, as a publish would.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ADMIN_HEADERS, rank_body
from tests.api.live_server import LiveServer
from tests.api.metrics_text import total
from tests.conftest import SMALL_MODEL_NAME
from tests.faults.conftest import fault_env, store_with
from tests.faults.drain import assert_drains_under_load
from tests.faults.traffic import Load, rank_counts, results, scrape, wait_until_idle, worker_pids

WORKERS = 2
DRAIN_DELAY_S = 5.0
SCORING_DELAY_S = 0.2  # every scoring holds its slot this long: a killed worker always has requests in flight
# Waiting bound for the sibling to poll serving.json and build v2 (a model build: seconds alone, far longer while
# other tests load the machine); the wait ends as soon as it serves v2, and the load runs until then.
FOLLOW_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def fleet_store(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return store_with(store, tmp_path_factory.mktemp("workers_store"), ("v1",))


@pytest.fixture(scope="module")
def server(fleet_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = fault_env(fleet_store, RANKER_DRAIN_DELAY_S=str(DRAIN_DELAY_S))
    log = tmp_path_factory.mktemp("logs") / "workers.log"
    with LiveServer(env, workers=WORKERS, delay_s=SCORING_DELAY_S, log_path=log) as live:
        worker_pids(live.url, WORKERS)
        yield live


@pytest.fixture(scope="module")
def body(schema) -> bytes:
    return json.dumps(rank_body(schema, n=50)).encode()


def _serving(samples: dict, version: str) -> float:
    """1 when some live worker serves `version` (ranker_model_info is the max over live workers), else 0."""
    return total(samples, "ranker_model_info", version=version)


def test_kill9_of_a_worker_under_load_loses_only_its_requests_and_its_replacement_serves_the_fleet_version(
    server: LiveServer, fleet_store: Path, store: Path, body: bytes
) -> None:
    if not (fleet_store / SMALL_MODEL_NAME / "v2").exists():  # published while serving: newer than the fleet's
        store_with(store, fleet_store, ("v2",))
    victim = sorted(worker_pids(server.url, WORKERS))[0]
    before = rank_counts(scrape(server.url))
    with Load(server.url, body, threads=4) as load:
        time.sleep(1.0)
        os.kill(int(victim), signal.SIGKILL)
        time.sleep(1.5)
    outcomes = load.stop()
    statuses = results(outcomes)
    lost = sum(count for result, count in statuses.items() if not result.isdigit())
    assert statuses["200"] > 0 and set(statuses) <= {"200", "ReadError", "RemoteProtocolError"}, statuses
    assert lost <= 4, statuses  # at most one in flight per client thread, on the killed worker
    survivors = worker_pids(server.url, WORKERS, excluded={victim})  # the dead one's live gauges are gone
    samples = wait_until_idle(server.url)  # the dead worker's in-flight requests no longer count
    counted = rank_counts(samples) - before
    assert set(counted) == {"200"}, counted
    assert statuses["200"] <= counted["200"] <= statuses["200"] + lost  # its totals kept, nothing else
    # the replacement serves v1 like its sibling, not v2 (the newest on disk): no live worker reports v2
    assert victim not in survivors
    assert _serving(samples, "v1") == 1 and _serving(samples, "v2") == 0
    for _ in range(6):  # fresh connections reach both workers
        response = httpx.post(f"{server.url}/rank", content=body, headers={"content-type": "application/json"},
                              timeout=30)
        assert response.status_code == 200 and response.headers["x-model-version"] == "v1"


def test_reload_under_load_answers_every_request_and_every_worker_follows(
    server: LiveServer, fleet_store: Path, store: Path, body: bytes
) -> None:
    if not (fleet_store / SMALL_MODEL_NAME / "v2").exists():
        store_with(store, fleet_store, ("v2",))
    before = scrape(server.url)
    with Load(server.url, body, threads=4, max_s=FOLLOW_TIMEOUT_S + 150) as load:
        time.sleep(0.5)
        reload = httpx.post(f"{server.url}/admin/reload", headers=ADMIN_HEADERS, timeout=120)  # no version: latest
        deadline = time.monotonic() + FOLLOW_TIMEOUT_S
        while _serving(scrape(server.url), "v1") and time.monotonic() < deadline:  # the sibling polls the file
            time.sleep(0.3)
        time.sleep(0.5)
    outcomes = load.stop()
    assert reload.status_code == 200 and reload.json()["version"] == "v2", reload.text
    assert results(outcomes) == {"200": len(outcomes)}, results(outcomes)
    assert outcomes[-1].version == "v2"
    samples = wait_until_idle(server.url)
    assert rank_counts(samples) - rank_counts(before) == {"200": len(outcomes)}
    assert _serving(samples, "v1") == 0 and _serving(samples, "v2") == 1
    assert total(samples, "ranker_reloads_total", outcome="ok") - total(before, "ranker_reloads_total", outcome="ok") \
        == WORKERS


def test_sigterm_with_two_workers_turns_readyz_503_keeps_serving_through_the_drain_and_resets_nothing(
    server: LiveServer, body: bytes
) -> None:
    assert_drains_under_load(server, body, DRAIN_DELAY_S)
