"""HTTP limits against a real `ranker serve` (issue 21, item 4), over raw sockets: oversized or slow request
heads, idle connections, more connections than allowed, more request bodies in memory than the byte budget,
and huge finite dense values. Every wait is a generous upper deadline, never a speed expectation."""

from __future__ import annotations

import json
import math
import select
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import rank_body
from tests.api.live_server import LiveServer
from tests.faults.conftest import fault_env, store_with

HEADER_READ_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 16
MAX_BODY_BYTES = 4 * 2**20
BUFFERED_BODIES = 2  # the byte budget holds two of the largest bodies
BUDGET_SLACK = 64 * 1024  # and small ones another test may not have released yet
SCORING_DELAY_S = 0.5  # every scoring holds its slot (and its body) this long: a burst overlaps
DEADLINE_S = 15.0  # upper bound for anything the server should do "at once" or "within the timeout"
BURST = 16
# 16 bodies of 4 MiB (~45k candidates each) at once left ~+60 MB for good before the budget (12 of them: +62 MB
# measured), with it ~+8 MB
RSS_GROWTH_BOUND_MB = 32.0


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = fault_env(
        store_with(store, tmp_path_factory.mktemp("limits_store"), ("v1",)), RANKER_MODEL_VERSION="v1",
        RANKER_HEADER_READ_TIMEOUT_S=str(HEADER_READ_TIMEOUT_S), RANKER_KEEP_ALIVE_TIMEOUT_S="1",
        RANKER_MAX_CONNECTIONS=str(MAX_CONNECTIONS), RANKER_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        RANKER_MAX_BUFFERED_BODY_BYTES=str(BUFFERED_BODIES * MAX_BODY_BYTES + BUDGET_SLACK),
        RANKER_BODY_READ_TIMEOUT_S="60",
        RANKER_MAX_QUEUED_REQUESTS=str(4 * BURST), RANKER_RETRY_AFTER_S="2", RANKER_MAX_CANDIDATES="100000",
        RANKER_MAX_QUEUED_CANDIDATES="10000000",
    )
    log = tmp_path_factory.mktemp("logs") / "limits.log"
    with LiveServer(env, workers=1, delay_s=SCORING_DELAY_S, log_path=log) as live:
        yield live


@pytest.fixture(scope="module")
def large_body(schema: Any) -> bytes:
    """A valid /rank body of as many candidates as fit in MAX_BODY_BYTES, padded with JSON whitespace to it."""
    per_candidate = len(json.dumps(rank_body(schema, n=1000))) / 1000
    body = json.dumps(rank_body(schema, n=int(0.9 * MAX_BODY_BYTES / per_candidate))).encode()
    return body + b" " * (MAX_BODY_BYTES - len(body))


def connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S)
    sock.settimeout(DEADLINE_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (DEADLINE_S at most: then the test fails)."""
    received = b""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            break
        if not data:
            return received
        received += data
    pytest.fail(f"the server kept the connection open for {DEADLINE_S} s; it sent {received[:200]!r}")


def send_all(sock: socket.socket, data: bytes) -> None:
    """Send `data`; the server may refuse and close before all of it is sent (that is the point)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def read_response(sock: socket.socket) -> bytes:
    """One response (the connection may stay open: keep-alive)."""
    received = b""
    while b"\r\n\r\n" not in received or len(body_of(received)) < content_length(received):
        data = sock.recv(65536)
        if not data:
            break
        received += data
    return received


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


def content_length(response: bytes) -> int:
    for line in response.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def json_of(response: bytes) -> Any:
    return json.loads(body_of(response))


def assert_healthy(server: LiveServer) -> None:
    """/healthz answers 200 (retried until DEADLINE_S: refused connections may still be closing)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            if httpx.get(f"{server.url}/healthz", timeout=DEADLINE_S).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server no longer answers /healthz"
        time.sleep(0.1)


def rss_mb(server: LiveServer) -> float:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# --- request heads ---


def test_a_one_mib_header_is_refused_with_431_and_the_server_keeps_serving(server: LiveServer) -> None:
    sock = connect(server)
    send_all(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2**20 + b"\r\n\r\n")
    response = read_until_closed(sock)
    assert status_of(response) == 431, response[:200]
    assert json_of(response)["error"]["code"] == "headers_too_large"
    assert_healthy(server)


def test_a_thousand_small_headers_are_refused_with_431(server: LiveServer) -> None:
    fields = b"".join(b"X-Field-%d: v\r\n" % i for i in range(1000))  # ~16 KB: within the size limit
    sock = connect(server)
    send_all(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    response = read_until_closed(sock)
    assert status_of(response) == 431, response[:200]
    assert json_of(response)["error"]["code"] == "too_many_headers"
    assert_healthy(server)


def test_one_mib_of_trailers_after_a_chunked_body_is_refused(server: LiveServer) -> None:
    sock = connect(server)
    send_all(sock, b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
                   b"\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: " + b"a" * 2**20 + b"\r\n\r\n")
    response = read_until_closed(sock)
    assert status_of(response) in (431, 0), response[:200]  # 0: closed without an answer (a response had begun)
    assert_healthy(server)


# --- slow or idle connections ---


def test_a_connection_that_sends_nothing_is_closed_within_the_header_timeout(server: LiveServer) -> None:
    sock = connect(server)
    assert read_until_closed(sock) == b""  # closed quietly: no request, no answer


def test_half_a_request_line_is_answered_408_and_closed(server: LiveServer) -> None:
    sock = connect(server)
    sock.sendall(b"GET /hea")
    response = read_until_closed(sock)
    assert status_of(response) == 408, response[:200]
    assert json_of(response)["error"]["code"] == "header_read_timeout"


def test_a_head_trickled_after_a_response_is_closed_within_the_header_timeout(server: LiveServer) -> None:
    """Each byte resets uvicorn's keep-alive timer; the head timer, armed at the response, does not reset."""
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(read_response(sock)) == 200
    deadline = time.monotonic() + DEADLINE_S
    closed = False
    for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        if select.select([sock], [], [], HEADER_READ_TIMEOUT_S / 4)[0] or time.monotonic() > deadline:
            break  # the server answered (408) or closed
    response = b"" if closed else read_until_closed(sock)
    assert closed or status_of(response) == 408, response[:200]


# --- request bodies held at once ---


def test_a_body_that_would_pass_the_budget_gets_503_before_it_is_sent_and_disconnects_release_it(
    server: LiveServer, large_body: bytes
) -> None:
    head = (b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % MAX_BODY_BYTES)
    socks = [connect(server) for _ in range(BUFFERED_BODIES + 1)]
    try:
        for sock in socks:
            sock.sendall(head)  # heads only: not a byte of any body is sent
        ready = select.select(socks, [], [], DEADLINE_S)[0]
        assert len(ready) == 1, f"{len(ready)} of {len(socks)} answered; the budget holds {BUFFERED_BODIES} bodies"
        response = read_response(ready[0])
        assert status_of(response) == 503, response[:200]
        assert b"retry-after: 2" in response.lower()
        assert json_of(response)["error"]["code"] == "overloaded"
    finally:
        for sock in socks:
            sock.close()  # the two holders leave: their reservations must come back
    deadline = time.monotonic() + DEADLINE_S
    while True:
        answer = httpx.post(f"{server.url}/rank", content=large_body, headers={"content-type": "application/json"},
                            timeout=60)
        if answer.status_code != 503:
            break
        assert time.monotonic() < deadline, "the budget was not released after the holders disconnected"
        time.sleep(0.2)
    assert answer.status_code == 200, answer.text


def test_a_burst_of_large_uploads_is_answered_200_or_503_and_memory_returns(
    server: LiveServer, large_body: bytes
) -> None:
    def upload(_: int) -> httpx.Response:
        return httpx.post(f"{server.url}/rank", content=large_body, headers={"content-type": "application/json"},
                          timeout=120)

    for _ in range(2):  # the allocator's pools settle on the first large bodies
        assert upload(0).status_code == 200
    time.sleep(1.0)
    before = rss_mb(server)
    with ThreadPoolExecutor(BURST) as pool:
        responses = list(pool.map(upload, range(BURST)))
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {200, 503}, statuses
    refused = [response for response in responses if response.status_code == 503]
    assert refused, f"{BURST} uploads of {MAX_BODY_BYTES} bytes at once, a budget of {BUFFERED_BODIES}: none refused"
    for response in refused:
        assert response.headers["retry-after"] == "2" and response.json()["error"]["code"] == "overloaded"
    assert any("max_buffered_body_bytes" in response.json()["error"]["message"] for response in refused)
    assert_healthy(server)
    deadline = time.monotonic() + DEADLINE_S
    while (after := rss_mb(server)) > before + RSS_GROWTH_BOUND_MB and time.monotonic() < deadline:
        time.sleep(0.5)
    assert after <= before + RSS_GROWTH_BOUND_MB, f"RSS {before:.0f} MB before the burst, {after:.0f} MB after"


# --- values ---


def _refuse_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name} in the response")


@pytest.mark.parametrize("huge", [1e38, 3e38, 3.4e38])  # all finite in float32; the last gave NaN scores
def test_huge_finite_dense_values_never_give_a_200_with_non_finite_scores(
    server: LiveServer, schema: Any, huge: float
) -> None:
    body = rank_body(schema, n=4)
    for name, value in body["user"].items():
        if isinstance(value, list) and value and isinstance(value[0], float):
            body["user"][name] = [huge] * len(value)
    for name, column in body["candidates"].items():
        if isinstance(column[0], list) and column[0] and isinstance(column[0][0], float):
            body["candidates"][name] = [[huge] * len(row) for row in column]
    response = httpx.post(f"{server.url}/rank", json=body, timeout=60)
    assert response.status_code != 500, response.text
    answer = json.loads(response.text, parse_constant=_refuse_constant)
    if response.status_code == 200:
        scores = [*answer["final_scores"], *(s for task in answer["scores"].values() for s in task)]
        assert all(isinstance(s, float) and math.isfinite(s) for s in scores), scores
    else:
        assert 400 <= response.status_code < 500 and "error" in answer


# --- connections (last: it leaves stalled requests to be cleaned up) ---


def test_connections_beyond_max_connections_get_503_at_once_and_service_resumes(server: LiveServer) -> None:
    # Held open past the header timeout: a complete head, then a body that stalls (body_read_timeout_s is 60 s)
    stalled = b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    socks = []
    try:
        for _ in range(MAX_CONNECTIONS + 4):
            sock = connect(server)
            send_all(sock, stalled)
            socks.append(sock)
        refused: list[bytes] = []
        waiting = list(socks)
        deadline = time.monotonic() + DEADLINE_S
        while len(refused) < 4 and time.monotonic() < deadline:
            for sock in select.select(waiting, [], [], 0.5)[0]:
                waiting.remove(sock)
                refused.append(read_until_closed(sock))
        assert len(refused) >= 4, f"{len(refused)} of {len(socks)} connections refused; at most {MAX_CONNECTIONS} fit"
        for response in refused:
            assert status_of(response) == 503, response[:200]
            assert b"retry-after: 2" in response.lower()
            assert json_of(response)["error"]["code"] == "too_many_connections"
    finally:
        for sock in socks:
            sock.close()
    assert_healthy(server)
