"""POST /rank in-process: response contract, equivalence across variants, errors, limits and overload."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.engine import Variant
from tests.api.conftest import ADMIN_HEADERS, make_settings, rank_body

TOLERANCE = 1e-5  # docs/ARCHITECTURE.md section 3, fp32


def test_rank_returns_scores_per_task_the_final_order_and_who_served_it(client: TestClient, schema) -> None:
    response = client.post("/rank", json=rank_body(schema, n=30, top_k=7, request_id="req-1"))
    assert response.status_code == 200
    data = response.json()
    assert data["request_id"] == "req-1" == response.headers["x-request-id"]
    assert data["model"] == {"name": "default", "version": "v1"}
    assert data["variant"] == response.headers["x-variant"] == "mari"
    assert response.headers["x-model-version"] == "v1"
    assert data["n_candidates"] == 30 and data["tasks"] == ["click", "long_view", "like"]
    assert all(len(data["scores"][task]) == 30 for task in data["tasks"])
    weights = client.get("/v1/models").json()["task_weights"]
    for i in range(30):
        expected = sum(weights[t] * data["scores"][t][i] for t in data["tasks"])
        assert data["final_scores"][i] == pytest.approx(expected, abs=1e-6)
    final = data["final_scores"]
    assert len(data["ranking"]) == 7
    assert data["ranking"] == sorted(range(30), key=lambda i: -final[i])[:7]
    assert all(stage in response.headers["server-timing"] for stage in ("decode", "encode", "infer", "respond"))


def test_columnar_and_row_wise_requests_get_the_same_scores(client: TestClient, schema) -> None:
    columnar = client.post("/rank", json=rank_body(schema, n=25, columnar=True, seed=4)).json()
    rows = client.post("/rank", json=rank_body(schema, n=25, columnar=False, seed=4)).json()
    assert columnar["scores"] == rows["scores"] and columnar["ranking"] == rows["ranking"]


def test_every_variant_scores_the_same_request_within_tolerance(client: TestClient, schema) -> None:
    body = rank_body(schema, n=200, seed=5, top_k=None)
    results = {}
    try:
        for variant in Variant:
            switched = client.post("/admin/variant", json={"variant": variant.value}, headers=ADMIN_HEADERS)
            assert switched.status_code == 200
            response = client.post("/rank", json=body)
            assert response.headers["x-variant"] == variant.value
            results[variant] = response.json()
    finally:
        client.post("/admin/variant", json={"variant": "mari"}, headers=ADMIN_HEADERS)
    reference = results[Variant.VANI]
    for variant, data in results.items():
        for task in reference["tasks"]:
            difference = (torch.tensor(data["scores"][task]) - torch.tensor(reference["scores"][task])).abs().max()
            assert difference <= TOLERANCE, (variant, task, float(difference))


def test_a_request_without_an_id_gets_a_fresh_one_in_the_body_and_the_header(client: TestClient, schema) -> None:
    answers = [client.post("/rank", json=rank_body(schema, n=3)) for _ in range(3)]
    ids = [answer.json()["request_id"] for answer in answers]
    assert [answer.headers["x-request-id"] for answer in answers] == ids
    assert len(set(ids)) == 3 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_candidate_scored_in_a_batch_equals_it_scored_alone(client: TestClient, schema) -> None:
    body = rank_body(schema, n=100, columnar=False, seed=6)
    batch = client.post("/rank", json=body).json()
    for index in (0, 57, 99):
        alone = client.post("/rank", json={**body, "candidates": [body["candidates"][index]]}).json()
        for task in batch["tasks"]:
            assert alone["scores"][task][0] == pytest.approx(batch["scores"][task][index], abs=TOLERANCE)


def test_ab_split_sends_each_user_to_one_stable_arm(client: TestClient, schema) -> None:
    split = {"variant": "mari", "ab_split": {"mari": 1, "vani": 1}}
    assert client.post("/admin/variant", json=split, headers=ADMIN_HEADERS).status_code == 200
    seen: dict[str, set[str]] = {}
    try:
        for user in range(40):
            for _ in range(2):
                body = rank_body(schema, n=3, seed=user, user_id=f"user-{user}")
                seen.setdefault(f"user-{user}", set()).add(client.post("/rank", json=body).headers["x-variant"])
    finally:
        client.post("/admin/variant", json={"variant": "mari"}, headers=ADMIN_HEADERS)
    assert all(len(arms) == 1 for arms in seen.values())
    assert {next(iter(arms)) for arms in seen.values()} == {"mari", "vani"}


BAD_REQUESTS = [
    ("malformed json", b'{"user_id": "u",', 400, "malformed_json"),
    ("not an object", b"42", 422, "invalid_type"),
    ("empty body", b"", 400, "malformed_json"),
]


@pytest.mark.parametrize("raw, status, code", [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_unparseable_bodies_are_4xx_json_errors(client: TestClient, raw: bytes, status: int, code: str) -> None:
    response = client.post("/rank", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_a_schema_violation_is_a_422_naming_the_field_and_the_server_keeps_serving(client: TestClient, schema) -> None:
    body = rank_body(schema, n=4)
    body["candidates"]["item_dense"][3] = [0.1]
    response = client.post("/rank", json=body)
    assert response.status_code == 422
    assert response.json() == {"error": {"code": "wrong_width", "field": "candidates.item_dense[3]",
                                         "message": response.json()["error"]["message"]}}
    assert client.post("/rank", json=rank_body(schema, n=4)).status_code == 200


def test_body_and_candidate_limits_are_413_and_422(store: Path, schema) -> None:
    settings = make_settings(store, model_version="v1", max_body_bytes=20_000, max_candidates=8)
    with TestClient(create_app(settings)) as limited:
        too_many = limited.post("/rank", json=rank_body(schema, n=9))
        assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "too_many_candidates"
        large = json.dumps(rank_body(schema, n=8)).encode() + b" " * 20_000
        too_large = limited.post("/rank", content=large, headers={"content-type": "application/json"})
        assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "body_too_large"
        assert limited.post("/rank", json=rank_body(schema, n=8)).status_code == 200


def test_requests_beyond_the_inference_slots_get_503_with_retry_after(store: Path, schema) -> None:
    settings = make_settings(store, model_version="v1", inference_concurrency=1, max_queued_requests=1,
                             queue_timeout_s=5.0, retry_after_s=3)
    app = create_app(settings)
    scorer = app.state.service.scorer
    score = scorer._score_on_slot

    def slow_score(*args, **kwargs):  # hold the only slot long enough for the others to arrive
        time.sleep(0.4)
        return score(*args, **kwargs)

    scorer._score_on_slot = slow_score
    body = json.dumps(rank_body(schema, n=5)).encode()

    async def burst() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                json_post = {"content": body, "headers": {"content-type": "application/json"}}
                return await asyncio.gather(*(http.post("/rank", **json_post) for _ in range(4)))

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503, 503]  # one running, one queued, two refused at once
    refused = [r for r in responses if r.status_code == 503]
    assert all(r.headers["retry-after"] == "3" and r.json()["error"]["code"] == "overloaded" for r in refused)


def test_readyz_is_503_until_the_model_is_loaded_and_warmed(store: Path, client: TestClient) -> None:
    not_started = TestClient(create_app(make_settings(store, model_version="v1")))  # no lifespan: nothing loaded
    response = not_started.get("/readyz")
    assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
    assert not_started.post("/rank", json={}).status_code == 503
    assert not_started.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}


def test_openapi_documents_both_request_forms(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/rank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/RankRequest"}  # the loaded model's own request
    forms = spec["components"]["schemas"]["RankRequest"]["properties"]["candidates"]["anyOf"]
    refs = {(form.get("items") or form)["$ref"].rsplit("/", 1)[-1] for form in forms}
    assert refs == {"CandidateColumns", "CandidateRow"}  # columnar, and a list of rows
    assert refs <= set(spec["components"]["schemas"])
