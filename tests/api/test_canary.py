"""A version canary in one app (in process): each user is served by one version with that version's own scores,
A/B variants route inside each version, and a sample is compared with the other version (metrics, /v1/models)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.engine import Variant
from service.serving.build import build_variants
from service.serving.fleet_config import FleetConfig, FleetConfigFile
from service.serving.routing import VariantRouter, VersionRouter
from service.store import load_artifact
from tests.api.conftest import MODEL_NAME, make_settings, private_store, rank_body
from tests.api.metrics_text import parse_metrics, total

TOLERANCE = 1e-5  # docs/ARCHITECTURE.md section 3, fp32
WEIGHTS = {"v1": 0.5, "v2": 0.5}
AB_SPLIT = {"mari": 0.5, "vani": 0.5}
USERS = 24
WAIT_S = 60.0  # bound of the wait for the background comparisons


@pytest.fixture(scope="module")
def canary(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app whose serving.json splits users 50/50 over v1 and v2, A/B mari/vani inside each, every request
    compared with the other version."""
    root = private_store(store, tmp_path_factory)
    FleetConfigFile(root / MODEL_NAME).write(FleetConfig.model_validate({
        "generation": 1, "version": "v1", "variant": "vani", "ab_split": AB_SPLIT,
        "shadow": {"variant": None, "sample_rate": 0}, "versions": WEIGHTS,
        "labels": {"stable": "v1", "canary": "v2"}, "compare": {"sample_rate": 1.0, "top_k": 5},
    }))
    with TestClient(create_app(make_settings(root, model_version="v1"))) as client:
        yield client


def eager_vani(store: Path, version: str) -> torch.nn.Module:
    loaded = load_artifact(store / MODEL_NAME / version)
    return build_variants(loaded.model, loaded.manifest.user_features, loaded.schema.example_batch,
                          variants=(Variant.VANI,))[Variant.VANI].module


def test_each_user_gets_one_version_with_its_own_scores_and_a_variant_arm_inside_it(
    canary: TestClient, store: Path, schema
) -> None:
    versions, variants = VersionRouter("v1", WEIGHTS), VariantRouter(Variant.VANI, AB_SPLIT)
    models = {version: eager_vani(store, version) for version in WEIGHTS}
    codec = canary.app.state.service.runtime.serving.codec  # type: ignore[attr-defined]
    seen: set[tuple[str, str]] = set()
    for _ in range(USERS):
        user = uuid.uuid4().hex
        body = rank_body(schema, n=12, seed=int(uuid.uuid4().int % 10_000), user_id=user)
        answer = canary.post("/rank", json=body)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        assert answer.headers["x-model-version"] == data["model"]["version"] == versions.route(user)
        assert answer.headers["x-variant"] == data["variant"] == variants.route(user).value
        assert canary.post("/rank", json=body).headers["x-model-version"] == versions.route(user)  # stays
        with torch.inference_mode():
            expected = models[versions.route(user)](codec.read(json.dumps(body).encode()).encoded.features)
        for task in data["tasks"]:
            assert torch.allclose(torch.tensor(data["scores"][task]), expected[task], atol=TOLERANCE, rtol=0)
        seen.add((data["model"]["version"], data["variant"]))
    anonymous = canary.post("/rank", json=rank_body(schema, n=5))
    assert anonymous.headers["x-model-version"] == "v1"  # no user id: the primary
    assert {version for version, _ in seen} == {"v1", "v2"}  # 24 users at 50/50: all on one side once in 8e6


def test_every_sampled_request_is_compared_with_the_other_version_in_metrics_and_v1_models(
    canary: TestClient, schema
) -> None:
    for _ in range(6):
        user = uuid.uuid4().hex
        assert canary.post("/rank", json=rank_body(schema, n=20, user_id=user)).status_code == 200
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        samples = parse_metrics(canary.get("/metrics").text)
        served = total(samples, "ranker_requests_total")
        compared = total(samples, "ranker_version_comparisons_total", primary_version="v1", other_version="v2")
        if compared >= served:
            break
        time.sleep(0.05)
    assert compared == served and served >= 6, (compared, served)  # sample rate 1: every request, both ways
    for histogram in ("ranker_version_topk_overlap", "ranker_version_kendall_tau", "ranker_version_spearman",
                      "ranker_version_score_abs_difference"):
        assert total(samples, f"{histogram}_count", primary_version="v1", other_version="v2") == compared
    assert total(samples, "ranker_version_disagreements_total") == 0  # no min_overlap: never counted
    described = canary.get("/v1/models").json()["versions"]
    assert described["primary"] == "v1"
    assert {name: (v["weight"], v["labels"]) for name, v in described["serving"].items()} == {
        "v1": (0.5, ["stable"]), "v2": (0.5, ["canary"])}
    summary = described["compare"]["summary"]["v1 vs v2"]
    assert summary["count"] == compared and 0 <= summary["mean_topk_overlap"] <= 1
    assert -1 <= summary["mean_kendall_tau"] <= 1 and summary["last_score_difference_p90"] >= 0


def test_a_v2_url_that_names_a_serving_version_pins_it_and_one_that_does_not_serve_is_404(
    canary: TestClient, schema
) -> None:
    from tests.api.v2_requests import feature_arrays, infer_inputs, request_body

    versions = VersionRouter("v1", WEIGHTS)
    user = next(u for u in (uuid.uuid4().hex for _ in range(200)) if versions.route(u) == "v1")
    body, json_size = request_body(infer_inputs(schema, feature_arrays(schema, rank_body(schema, n=6))),
                                   user_id=user)
    headers = {"Inference-Header-Content-Length": str(json_size)}
    for version in ("v1", "v2"):  # the user's own version is v1: the URL wins
        answer = canary.post(f"/v2/models/{MODEL_NAME}/versions/{version}/infer", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert v2_header(answer)["model_version"] == answer.headers["x-model-version"] == version
        assert canary.get(f"/v2/models/{MODEL_NAME}/versions/{version}/ready").status_code == 200
    assert v2_header(canary.post(f"/v2/models/{MODEL_NAME}/infer", content=body, headers=headers))[
        "model_version"] == "v1"
    missing = canary.post(f"/v2/models/{MODEL_NAME}/versions/v9/infer", content=body, headers=headers)
    assert missing.status_code == 404 and "v9" in missing.text


def test_an_admin_reload_during_a_canary_serves_that_one_version_everywhere(canary: TestClient, schema) -> None:
    """Last in this file: it ends the module app's canary."""
    from tests.api.conftest import ADMIN_HEADERS

    reloaded = canary.post("/admin/reload", json={"version": "v2"}, headers=ADMIN_HEADERS)
    assert reloaded.status_code == 200, reloaded.text
    assert canary.get("/v1/models").json()["versions"]["serving"].keys() == {"v2"}
    for _ in range(10):
        answer = canary.post("/rank", json=rank_body(schema, n=4, user_id=uuid.uuid4().hex))
        assert answer.headers["x-model-version"] == "v2"


def v2_header(answer) -> dict:
    """The JSON part of a V2 response (binary output data may follow it)."""
    length = answer.headers.get("inference-header-content-length")
    return json.loads(answer.content[:int(length)] if length else answer.content)
