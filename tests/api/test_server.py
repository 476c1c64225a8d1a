"""Integration: a real uvicorn on 127.0.0.1 in a subprocess, driven over HTTP."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from service.engine import Variant
from tests.api.conftest import ADMIN_HEADERS, ADMIN_TOKEN, MODEL_NAME, corrupt_copy, private_store, rank_body
from tests.api.live_server import LiveServer
from tests.api.metrics_text import parse_metrics, total, value

TOLERANCE = 1e-5
MAX_BODY_BYTES = 1_000_000


def server_env(store: Path, **extra: str) -> dict[str, str]:
    env = {
        "RANKER_MODEL_STORE": str(store), "RANKER_MODEL_VERSION": "v1", "RANKER_ADMIN_TOKEN": ADMIN_TOKEN,
        "RANKER_WARMUP_CANDIDATES": "[1, 16]", "RANKER_ANALYSIS_CANDIDATES": "100", "RANKER_TORCH_THREADS": "1",
        "RANKER_MAX_CANDIDATES": "1000", "RANKER_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "RANKER_SHADOW_VARIANT": "vani", "RANKER_SHADOW_SAMPLE_RATE": "1.0", "RANKER_QUEUE_TIMEOUT_S": "30",
        "RANKER_VARIANT": "mari",  # MaRI, shadowed by VanI (the default, auto, may serve VanI: never shadowed)
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def live_store(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `live` server's own store: its admin calls write serving.json there."""
    return private_store(store, tmp_path_factory)


@pytest.fixture(scope="module")
def live(live_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with LiveServer(server_env(live_store), log_path=log) as server:
        yield server


def post_rank(url: str, body: dict | bytes, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}/rank", content=content, headers={"content-type": "application/json"}, timeout=30,
                      **kwargs)


def test_rank_over_http_in_both_forms_with_every_variant_within_tolerance(live: LiveServer, schema) -> None:
    columnar, rows = rank_body(schema, n=300, seed=11), rank_body(schema, n=300, columnar=False, seed=11)
    scores = {}
    try:
        for variant in Variant:
            switched = httpx.post(f"{live.url}/admin/variant", json={"variant": variant.value}, headers=ADMIN_HEADERS)
            assert switched.status_code == 200
            for form, body in (("columnar", columnar), ("rows", rows)):
                response = post_rank(live.url, body)
                assert response.status_code == 200 and response.headers["x-variant"] == variant.value
                scores[variant, form] = response.json()["scores"]
    finally:
        httpx.post(f"{live.url}/admin/variant", json={"variant": "mari"}, headers=ADMIN_HEADERS)
    reference = scores[Variant.VANI, "columnar"]
    for key, got in scores.items():
        for task, expected in reference.items():
            assert (torch.tensor(got[task]) - torch.tensor(expected)).abs().max() <= TOLERANCE, key


def _bad_bodies(schema) -> list[tuple[str, bytes]]:
    def changed(change) -> bytes:
        body = rank_body(schema, n=6, seed=3)
        change(body)
        return json.dumps(body).encode()

    max_len = schema.get("user_seq").max_len
    nan_body = rank_body(schema, n=3)
    nan_body["candidates"]["item_dense"][1][0] = 4242.5
    return [
        ("malformed json", b'{"user_id": "u", "user": {'),
        ("not json at all", b"\x00\x01 not json"),
        ("wrong type", changed(lambda b: b["candidates"].__setitem__("item_id", ["a"] * 6))),
        ("missing feature", changed(lambda b: b["user"].pop("user_dense"))),
        ("unknown feature", changed(lambda b: b["candidates"].__setitem__("mood", [1] * 6))),
        ("wrong vector width", changed(lambda b: b["candidates"]["cross_dense"].__setitem__(0, [1.0]))),
        ("NaN", json.dumps(nan_body).replace("4242.5", "NaN").encode()),
        ("Infinity", json.dumps(nan_body).replace("4242.5", "-Infinity").encode()),
        ("negative id", changed(lambda b: b["candidates"]["item_id"].__setitem__(0, -5))),
        ("oversized id", changed(lambda b: b["candidates"]["item_id"].__setitem__(0, 2**64))),
        ("empty candidates", changed(lambda b: b.__setitem__("candidates", []))),
        ("too many candidates", json.dumps(rank_body(schema, n=1001)).encode()),
        ("sequence too long", changed(lambda b: b["user"].__setitem__("user_seq", [1] * (max_len + 1)))),
        ("body too large", b'{"user_id": "' + b"u" * MAX_BODY_BYTES + b'"}'),
    ]


def test_bad_inputs_over_http_are_4xx_json_naming_the_field_and_the_server_keeps_serving(
    live: LiveServer, schema
) -> None:
    for name, raw in _bad_bodies(schema):
        response = post_rank(live.url, raw)
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
        error = response.json()["error"]
        assert set(error) == {"code", "message", "field"} and error["message"], name
        if response.status_code == 422:
            assert error["field"], name
    assert post_rank(live.url, rank_body(schema, n=5)).status_code == 200
    assert httpx.get(f"{live.url}/readyz").status_code == 200


def test_metrics_move_as_requests_are_served_and_normal_shadows_never_mismatch(live: LiveServer, schema) -> None:
    before = parse_metrics(httpx.get(f"{live.url}/metrics").text)
    for seed in range(5):
        assert post_rank(live.url, rank_body(schema, n=40, seed=seed)).status_code == 200
    assert post_rank(live.url, b"{").status_code == 400
    deadline = time.monotonic() + 60
    while True:  # the shadow compares in the background (the deadline bounds the wait only)
        after = parse_metrics(httpx.get(f"{live.url}/metrics").text)
        compared = total(after, "ranker_shadow_comparisons_total") - total(before, "ranker_shadow_comparisons_total")
        if compared >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    moved = lambda metric, **labels: value(after, metric, **labels) - value(before, metric, **labels)  # noqa: E731
    served = {"model": MODEL_NAME, "variant": "mari"}
    assert moved("ranker_requests_total", **served, status="200") == 5
    assert moved("ranker_requests_total", model=MODEL_NAME, variant="none", status="400") == 1
    assert moved("ranker_candidates_scored_total", **served, version="v1") == 200
    assert moved("ranker_candidates_per_request_count") == 5
    assert moved("ranker_request_duration_seconds_count", **served, version="v1") == 5
    for stage in ("decode", "encode", "infer", "respond"):
        assert moved("ranker_stage_duration_seconds_count", **served, stage=stage) == 5
        assert moved("ranker_stage_duration_seconds_sum", **served, stage=stage) > 0
    assert compared >= 5
    assert total(after, "ranker_shadow_mismatches_total") == 0
    assert value(after, "ranker_shadow_max_abs_difference") <= TOLERANCE
    assert value(after, "ranker_requests_in_flight") == 0
    assert value(after, "ranker_model_info", name="default", version="v1", variant="mari") == 1


def test_reload_under_concurrent_traffic_fails_no_request(live: LiveServer, live_store: Path, schema) -> None:
    corrupt_copy(live_store, "v2", "v2-corrupted")
    body = json.dumps(rank_body(schema, n=50)).encode()
    stop = threading.Event()
    outcomes: list[tuple[int, str]] = []

    def traffic() -> None:
        with httpx.Client(timeout=30, headers={"content-type": "application/json"}) as http:
            while not stop.is_set():
                response = http.post(f"{live.url}/rank", content=body)
                outcomes.append((response.status_code, response.headers.get("x-model-version", "")))

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(traffic)
        time.sleep(0.3)
        reloads = [
            httpx.post(f"{live.url}/admin/reload", json={"version": v}, headers=ADMIN_HEADERS, timeout=120)
            for v in ("v2", "v2-corrupted", "v1")
        ]
        time.sleep(0.3)
        stop.set()
    assert [r.status_code for r in reloads] == [200, 409, 200]
    assert outcomes and all(status == 200 for status, _ in outcomes), {s for s, _ in outcomes}
    assert {"v1", "v2"} <= {version for _, version in outcomes}
    assert httpx.get(f"{live.url}/v1/models").json()["version"] == "v1"


@pytest.fixture(scope="module")
def slow_live(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Every scoring holds the only inference slot for 1 s; nobody may wait for it."""
    env = server_env(store, RANKER_INFERENCE_CONCURRENCY="1", RANKER_MAX_QUEUED_REQUESTS="0",
                     RANKER_RETRY_AFTER_S="2", RANKER_SHADOW_SAMPLE_RATE="0")
    log = tmp_path_factory.mktemp("logs") / "slow_server.log"
    with LiveServer(env, delay_s=1.0, log_path=log) as server:
        yield server


def test_overload_over_http_is_503_with_retry_after_not_a_queue(slow_live: LiveServer, schema) -> None:
    body = json.dumps(rank_body(schema, n=5)).encode()
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: post_rank(slow_live.url, body), range(4)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 503, 503, 503]
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "2"
            assert response.json()["error"]["code"] == "overloaded"


def test_graceful_shutdown_finishes_the_in_flight_request(slow_live: LiveServer, schema) -> None:
    result: dict[str, httpx.Response] = {}
    request = threading.Thread(target=lambda: result.setdefault("r", post_rank(slow_live.url, rank_body(schema, n=5))))
    request.start()
    time.sleep(0.4)  # the request holds its slot for 1 s
    return_code = slow_live.stop()
    request.join(30)
    assert result["r"].status_code == 200
    # uvicorn finishes in-flight work, then re-raises the captured SIGTERM: exit by SIGTERM, not our SIGKILL
    assert return_code in (0, -signal.SIGTERM)


def test_docs_page_loads_swagger_ui_from_this_server_only(live: LiveServer) -> None:
    """/docs works offline: the page and every asset it loads come from this server, none from a CDN."""
    page = httpx.get(f"{live.url}/docs", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    urls = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text) + re.findall(
        r"""url: ?['"]([^'"]+)['"]""", page.text)
    assert len(urls) >= 3, page.text  # script, stylesheet, the OpenAPI document
    assert not [url for url in urls if url.startswith(("http:", "https:", "//"))], urls  # nothing off this server
    for url in urls:
        fetched = httpx.get(f"{live.url}{url}", timeout=10)
        assert fetched.status_code == 200 and fetched.content, url
    assert "SwaggerUIBundle" in httpx.get(f"{live.url}/docs/assets/swagger-ui-bundle.js", timeout=10).text
    assert httpx.get(f"{live.url}/redoc", timeout=10).status_code == 404  # ReDoc (a CDN page) is off
