"""Faults at the HTTP edge, against a real `ranker serve` (uvicorn) on 127.0.0.1: aborted and stalled uploads,
bodies not declared as JSON, and admin input that must be refused naming the field (issue 12)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ADMIN_HEADERS, ADMIN_TOKEN, MODEL_NAME, private_store, rank_body
from tests.api.live_server import LiveServer
from tests.api.metrics_text import parse_metrics, total, value

BODY_READ_TIMEOUT_S = 1.0
JSON = {"content-type": "application/json"}
NOT_SERVED = {"model": MODEL_NAME, "variant": "none"}  # labels of a /rank request refused before scoring


def reliability_env(store: Path, **extra: str) -> dict[str, str]:
    env = {
        "RANKER_MODEL_STORE": str(store), "RANKER_MODEL_VERSION": "v1", "RANKER_ADMIN_TOKEN": ADMIN_TOKEN,
        "RANKER_WARMUP_CANDIDATES": "[1, 16]", "RANKER_ANALYSIS_CANDIDATES": "100", "RANKER_TORCH_THREADS": "1",
        "RANKER_CONFIG_POLL_S": "0", "RANKER_DRAIN_DELAY_S": "0",
        "RANKER_BODY_READ_TIMEOUT_S": str(BODY_READ_TIMEOUT_S),
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs") / "reliability.log"


@pytest.fixture(scope="module")
def live(store: Path, tmp_path_factory: pytest.TempPathFactory, server_log: Path) -> Iterator[LiveServer]:
    with LiveServer(reliability_env(private_store(store, tmp_path_factory)), log_path=server_log) as server:
        yield server


def metrics(server: LiveServer) -> dict:
    return parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text)


def upload_head(port: int, declared_bytes: int, path: str = "/rank") -> bytes:
    """Request line and headers of a JSON POST that promises `declared_bytes`, then its first byte."""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared_bytes}\r\n\r\n{{").encode()


def read_until_closed(sock: socket.socket, limit_s: float) -> bytes:
    sock.settimeout(limit_s)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def wait_for(condition, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_client_disconnect_mid_upload_is_a_499_counted_apart_from_5xx_and_logged_in_one_line(
    live: LiveServer, server_log: Path
) -> None:
    before = metrics(live)
    aborts = 5
    for _ in range(aborts):
        with socket.create_connection(("127.0.0.1", live.port)) as sock:
            sock.sendall(upload_head(live.port, 100_000))
            time.sleep(0.1)  # the server is reading the body when the client goes
    moved = lambda: value(metrics(live), "ranker_requests_total", **NOT_SERVED, status="499") - value(  # noqa: E731
        before, "ranker_requests_total", **NOT_SERVED, status="499")
    assert wait_for(lambda: moved() == aborts), moved()
    after = metrics(live)
    assert total(after, "ranker_requests_total", status="500") == total(before, "ranker_requests_total", status="500")
    assert value(after, "ranker_requests_in_flight") == 0
    log = server_log.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    lines = [line for line in log.splitlines() if "client disconnected" in line]
    assert len(lines) == aborts and all("POST /rank" in line for line in lines)


def test_stalled_uploads_are_answered_408_within_the_body_read_timeout_and_free_the_in_flight_gauge(
    live: LiveServer,
) -> None:
    before = metrics(live)
    stalled = [socket.create_connection(("127.0.0.1", live.port)) for _ in range(20)]
    try:
        started = time.monotonic()
        for sock in stalled:
            sock.sendall(upload_head(live.port, 10_000))  # headers and one byte, then nothing
        assert wait_for(lambda: value(metrics(live), "ranker_requests_in_flight") >= 1, 5.0)
        answers = [read_until_closed(sock, BODY_READ_TIMEOUT_S + 10) for sock in stalled]  # closed by the server
        elapsed = time.monotonic() - started
    finally:
        for sock in stalled:
            sock.close()
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert json.loads(body)["error"]["code"] == "body_read_timeout"
    assert BODY_READ_TIMEOUT_S <= elapsed < BODY_READ_TIMEOUT_S + 8
    after = metrics(live)
    assert value(after, "ranker_requests_total", **NOT_SERVED, status="408") - value(
        before, "ranker_requests_total", **NOT_SERVED, status="408") == len(stalled)
    assert value(after, "ranker_requests_in_flight") == 0


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonp"])
def test_rank_refuses_a_body_not_declared_as_json_with_415(live: LiveServer, schema, content_type: str | None) -> None:
    body = json.dumps(rank_body(schema, n=3)).encode()
    headers = {} if content_type is None else {"content-type": content_type}
    before = metrics(live)
    response = httpx.post(f"{live.url}/rank", content=body, headers=headers, timeout=30)
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"
    after = metrics(live)
    assert value(after, "ranker_requests_total", **NOT_SERVED, status="415") - value(
        before, "ranker_requests_total", **NOT_SERVED, status="415") == 1
    assert total(after, "ranker_candidates_scored_total") == total(before, "ranker_candidates_scored_total")


def test_rank_accepts_json_with_parameters(live: LiveServer, schema) -> None:
    body = json.dumps(rank_body(schema, n=3)).encode()
    response = httpx.post(f"{live.url}/rank", content=body, headers={"content-type": "Application/JSON; charset=utf-8"},
                          timeout=30)
    assert response.status_code == 200, response.text


def test_admin_posts_refuse_a_body_not_declared_as_json_with_415(live: LiveServer) -> None:
    for path, body in (("/admin/reload", b'{"version": "v1"}'), ("/admin/variant", b'{"variant": "uoi"}')):
        for headers in ({"content-type": "text/plain"}, {}):
            response = httpx.post(f"{live.url}{path}", content=body, headers={**ADMIN_HEADERS, **headers}, timeout=30)
            assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"
    assert httpx.get(f"{live.url}/v1/models").json()["routing"]["default_variant"] == "auto"  # the default


BAD_VERSIONS = ["v" * 300, "../v1", "", ".hidden", "a/b", "v1\n", "v1\x00", "..", 5, ["v1"]]


def test_admin_reload_refuses_bad_version_names_with_422_naming_the_field_and_counts_them(live: LiveServer) -> None:
    before = metrics(live)
    for version in BAD_VERSIONS:
        response = httpx.post(f"{live.url}/admin/reload", content=json.dumps({"version": version}),
                              headers={**ADMIN_HEADERS, **JSON}, timeout=30)
        assert response.status_code == 422, (version, response.status_code, response.text[:300])
        error = response.json()["error"]
        assert error["field"] == "version" and error["code"] == "invalid_value", version
    typo = httpx.post(f"{live.url}/admin/reload", content=b'{"versoin": "v1"}', headers={**ADMIN_HEADERS, **JSON})
    assert typo.status_code == 422 and typo.json()["error"] | {"message": ""} == {
        "code": "unknown_field", "field": "versoin", "message": ""}
    after = metrics(live)
    refused = total(after, "ranker_reloads_total", outcome="refused") - total(before, "ranker_reloads_total",
                                                                              outcome="refused")
    assert refused == len(BAD_VERSIONS) + 1
    assert total(after, "ranker_requests_total", status="500") == 0
    assert httpx.get(f"{live.url}/v1/models").json()["version"] == "v1"


@pytest.mark.parametrize("split", ['{"mari": NaN}', '{"mari": Infinity, "vani": 1}', '{"mari": 1e308, "vani": 1e308}',
                                   '{"mari": -1}', '{"mari": 0, "vani": 0}', '{"mari": 1e400}'])
def test_admin_variant_refuses_non_finite_or_overflowing_weights_with_422_naming_the_field(
    live: LiveServer, split: str
) -> None:
    body = '{"variant": "uoi", "ab_split": ' + split + "}"
    response = httpx.post(f"{live.url}/admin/variant", content=body, headers={**ADMIN_HEADERS, **JSON}, timeout=30)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "ab_split"
    assert httpx.get(f"{live.url}/v1/models").json()["routing"] == {"default_variant": "auto", "ab_split": {}}
