"""Client side of the fault tests: bounded background load, and what every request came back with.

Every request ends as an HTTP status or the name of the transport error (ConnectError: refused, nothing
sent; ReadError/RemoteProtocolError: reset or closed after it was sent, i.e. lost). Loops are bounded in time
and in count.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests.api.metrics_text import parse_metrics, total, value

REQUEST_TIMEOUT_S = 30.0
MAX_REQUESTS_PER_THREAD = 2000


@dataclass
class Outcome:
    sent_at: float  # monotonic
    result: str  # "200", "503", ... or the transport error's class name
    retry_after: str | None = None
    version: str | None = None

    @property
    def answered(self) -> bool:
        return self.result.isdigit()


@dataclass
class Load:
    """`threads` clients posting `body` to /rank until stop() or `max_s`; half of them on keep-alive
    connections (as a load balancer or locust would), half on a fresh connection per request."""

    url: str
    body: bytes
    threads: int = 4
    max_s: float = 30.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        deadline = time.monotonic() + self.max_s
        for index in range(self.threads):
            thread = threading.Thread(target=self._run, args=(index % 2 == 0, deadline), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._workers:
            thread.join(REQUEST_TIMEOUT_S + 5)
        return self.outcomes

    def _run(self, keep_alive: bool, deadline: float) -> None:
        headers = {"content-type": "application/json"}
        client = httpx.Client(timeout=REQUEST_TIMEOUT_S) if keep_alive else None
        try:
            for _ in range(MAX_REQUESTS_PER_THREAD):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                sent_at = time.monotonic()
                try:
                    if client is not None:
                        response = client.post(f"{self.url}/rank", content=self.body, headers=headers)
                    else:
                        response = httpx.post(f"{self.url}/rank", content=self.body, headers=headers,
                                              timeout=REQUEST_TIMEOUT_S)
                    outcome = Outcome(sent_at, str(response.status_code), response.headers.get("retry-after"),
                                      response.headers.get("x-model-version"))
                except httpx.TransportError as exc:
                    outcome = Outcome(sent_at, type(exc).__name__)
                    time.sleep(0.05)  # refused: do not spin
                with self._lock:
                    self.outcomes.append(outcome)
        finally:
            if client is not None:
                client.close()


def results(outcomes: list[Outcome]) -> Counter[str]:
    return Counter(outcome.result for outcome in outcomes)


def scrape(url: str) -> dict:
    with httpx.Client(timeout=10) as http:  # a fresh connection: with several workers, any of them answers
        return parse_metrics(http.get(f"{url}/metrics").text)


def wait_until_idle(url: str, timeout_s: float = 60.0) -> dict:
    """Metrics once no request is in flight (the gauge summed over live workers); AssertionError otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(url)
        if value(samples, "ranker_requests_in_flight") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert value(samples, "ranker_requests_in_flight") == 0, "requests still counted in flight"
    return samples


def rank_counts(samples: dict) -> Counter[str]:
    """ranker_requests_total by status, summed over variants."""
    statuses = {dict(labels)["status"] for (name, labels) in samples if name == "ranker_requests_total"}
    return Counter({status: int(total(samples, "ranker_requests_total", status=status)) for status in statuses})


def worker_pids(url: str, expected: int, excluded: frozenset[str] | set[str] = frozenset(),
                timeout_s: float = 180.0) -> set[str]:
    """The pids of the live workers once there are `expected` of them, none in `excluded`
    (ranker_config_generation has one series per live worker). The timeout bounds the wait for a respawned
    worker, which imports torch and builds the model first: far longer than alone while other tests run."""
    deadline = time.monotonic() + timeout_s
    pids: set[str] = set()
    while time.monotonic() < deadline:
        try:
            samples = scrape(url)
        except httpx.TransportError:
            samples = {}
        pids = {dict(labels)["pid"] for (name, labels) in samples if name == "ranker_config_generation"}
        if len(pids) == expected and not pids & excluded:
            return pids
        time.sleep(0.3)
    raise AssertionError(f"expected {expected} live workers, /metrics shows pids {sorted(pids)}")
