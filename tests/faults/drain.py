"""The SIGTERM drain check, shared by the one- and two-worker servers (service/api/drain.py)."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from tests.api.live_server import LiveServer
from tests.faults.traffic import Load, rank_counts, results, scrape, wait_until_idle

READY_503_WITHIN_S = 1.5  # the supervisor of several workers forwards SIGTERM on its next 0.5 s tick
LOAD_SHARE_OF_DELAY = 0.4  # the load keeps coming this long into the drain, then stops (the balancer moved)
EXIT_WITHIN_S = 30.0  # after the drain: in-flight requests finish, the model and threads stop


def assert_drains_under_load(server: LiveServer, body: bytes, drain_delay_s: float) -> None:
    """SIGTERM under load: /readyz 503 at once, every request sent during the drain answered 200, metrics
    consistent, then the server exits (not before the delay) and new connections are refused, not reset."""
    assert server.process is not None
    before = rank_counts(scrape(server.url))
    with Load(server.url, body, threads=4) as load:
        time.sleep(1.0)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        not_ready_after = _first_503_of_readyz(server.url, signalled)
        time.sleep(max(0.0, signalled + LOAD_SHARE_OF_DELAY * drain_delay_s - time.monotonic()))
    outcomes = load.stop()
    samples = wait_until_idle(server.url)  # still draining: it answers
    during_drain = [outcome for outcome in outcomes if outcome.sent_at > signalled]
    assert not_ready_after <= READY_503_WITHIN_S
    assert len(during_drain) >= 2 and all(o.result == "200" for o in during_drain), results(during_drain)
    assert results(outcomes) == {"200": len(outcomes)}, results(outcomes)
    assert rank_counts(samples) - before == {"200": len(outcomes)}
    try:
        server.process.wait(drain_delay_s + EXIT_WITHIN_S)
    except Exception:
        pytest.fail(f"server did not exit after the drain; log: {server.log()}")
    assert time.monotonic() - signalled >= drain_delay_s * 0.9  # it kept serving through the delay
    assert server.process.returncode in (0, -signal.SIGTERM), server.log()
    with pytest.raises(httpx.ConnectError):  # refused: nothing left listening, nothing queued to be reset
        httpx.get(f"{server.url}/readyz", timeout=5)


def _first_503_of_readyz(url: str, since: float) -> float:
    """Seconds from `since` to the first 503 of /readyz (fresh connections: any worker may answer)."""
    deadline = since + 2 * READY_503_WITHIN_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 503:
                return time.monotonic() - since
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return float("inf")
