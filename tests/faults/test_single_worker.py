"""One worker with one inference slot and RANKER_MODEL_VERSION pinned: a reload without a version, an overload
burst, stalled and aborted uploads, then SIGTERM under load (last: it ends the server)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ADMIN_HEADERS, rank_body
from tests.api.live_server import LiveServer
from tests.api.metrics_text import total
from tests.faults.conftest import fault_env, store_with
from tests.faults.drain import assert_drains_under_load
from tests.faults.traffic import Outcome, rank_counts, results, scrape, wait_until_idle

DRAIN_DELAY_S = 4.0
SCORING_DELAY_S = 0.2
MAX_QUEUED_REQUESTS = 4
BODY_READ_TIMEOUT_S = 1.0
BURST = 16
# Allocator pools and first-call caches fill during a server's first reloads (RSS after each of 16 reloads of a
# fresh server, MB: 392, 395, 397.6, 398.0, 398.1, ... 398.7), so growth is measured from the 4th reload on,
# counting those the server already did (the module's earlier test reloads twice: 2 more here, not 4).
SETTLING_RELOADS = 4
MEASURED_RELOADS = 4
# The leak this test was written for, 2.0 MB per reload of the small model before release_build_memory
# (bench/reload_memory.py, docs/soak.md), grows RSS ~8 MB over the 4 measured reloads: twice the bound (a server
# leaking 2 MB per build, simulated: +8.4 MB). Since the fixes a reload adds ~0.1 MB: 0.3 MB over those 4.
MAX_GROWTH_MB = 4.0


@pytest.fixture(scope="module")
def pinned_store(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return store_with(store, tmp_path_factory.mktemp("single_store"), ("v1", "v2"))


@pytest.fixture(scope="module")
def server(pinned_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = fault_env(pinned_store, RANKER_MODEL_VERSION="v1", RANKER_DRAIN_DELAY_S=str(DRAIN_DELAY_S),
                    RANKER_INFERENCE_CONCURRENCY="1", RANKER_MAX_QUEUED_REQUESTS=str(MAX_QUEUED_REQUESTS),
                    RANKER_RETRY_AFTER_S="2", RANKER_BODY_READ_TIMEOUT_S=str(BODY_READ_TIMEOUT_S))
    log = tmp_path_factory.mktemp("logs") / "single.log"
    with LiveServer(env, workers=1, delay_s=SCORING_DELAY_S, log_path=log) as live:
        yield live


@pytest.fixture(scope="module")
def body(schema) -> bytes:
    return json.dumps(rank_body(schema, n=50)).encode()


def test_reload_without_a_version_rolls_out_the_latest_even_with_the_version_pinned(server: LiveServer) -> None:
    try:
        response = httpx.post(f"{server.url}/admin/reload", headers=ADMIN_HEADERS, timeout=120)
        assert response.status_code == 200, response.text
        assert (response.json()["previous_version"], response.json()["version"]) == ("v1", "v2")
        assert httpx.get(f"{server.url}/v1/models").json()["version"] == "v2"
    finally:
        httpx.post(f"{server.url}/admin/reload", json={"version": "v1"}, headers=ADMIN_HEADERS, timeout=120)


def test_overload_burst_is_answered_200_or_503_with_retry_after_and_nothing_is_lost(
    server: LiveServer, body: bytes
) -> None:
    before = rank_counts(scrape(server.url))

    def post(_: int) -> Outcome:
        sent_at = time.monotonic()
        try:
            response = httpx.post(f"{server.url}/rank", content=body, headers={"content-type": "application/json"},
                                  timeout=60)
            return Outcome(sent_at, str(response.status_code), response.headers.get("retry-after"))
        except httpx.TransportError as exc:
            return Outcome(sent_at, type(exc).__name__)

    with ThreadPoolExecutor(BURST) as pool:
        outcomes = list(pool.map(post, range(BURST)))
    statuses = results(outcomes)
    assert set(statuses) == {"200", "503"}, statuses  # one slot and a short queue: some are shed, none lost
    assert all(o.retry_after == "2" for o in outcomes if o.result == "503")
    samples = wait_until_idle(server.url)
    assert rank_counts(samples) - before == statuses


def _raw_upload(url: str, declared: int, sent: bytes) -> socket.socket:
    """A POST /rank that declares `declared` body bytes and sends only `sent` of them (connection left open)."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=10)
    head = (f"POST /rank HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    connection.sendall(head + sent)
    return connection


def test_stalled_upload_is_answered_408_after_the_body_read_timeout(server: LiveServer) -> None:
    before = rank_counts(scrape(server.url))
    started = time.monotonic()
    with _raw_upload(server.url, 1000, b"{") as connection:
        answer = connection.recv(4096).decode(errors="replace")
    waited = time.monotonic() - started
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert BODY_READ_TIMEOUT_S * 0.9 <= waited <= BODY_READ_TIMEOUT_S + 5
    samples = wait_until_idle(server.url)
    assert rank_counts(samples) - before == {"408": 1}


def test_aborted_upload_is_counted_as_499_not_a_server_error(server: LiveServer) -> None:
    before = rank_counts(scrape(server.url))
    _raw_upload(server.url, 1000, b'{"user_id": "u", ').close()  # gone mid-body
    deadline = time.monotonic() + 30  # a bound on waiting for the count, not a claim about its delay
    while rank_counts(scrape(server.url)) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    samples = wait_until_idle(server.url)
    assert rank_counts(samples) - before == {"499": 1}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_reloads_do_not_grow_memory_without_bound(server: LiveServer) -> None:
    assert server.process is not None
    done = int(total(scrape(server.url), "ranker_reloads_total", outcome="ok"))  # reloads this server already did
    settling = max(0, SETTLING_RELOADS - done)
    rss = [_rss_mb(server.process.pid)]
    for index in range(settling + MEASURED_RELOADS):
        version = ("v2", "v1")[index % 2]
        response = httpx.post(f"{server.url}/admin/reload", json={"version": version}, headers=ADMIN_HEADERS,
                              timeout=120)
        assert response.status_code == 200, response.text
        rss.append(_rss_mb(server.process.pid))
    growth = rss[-1] - rss[settling]
    assert growth < MAX_GROWTH_MB, (done, [round(mb, 1) for mb in rss])


def test_sigterm_with_one_worker_turns_readyz_503_keeps_serving_through_the_drain_and_resets_nothing(
    server: LiveServer, body: bytes
) -> None:
    assert_drains_under_load(server, body, DRAIN_DELAY_S)
