"""Admin: bearer token, reload beside the old model with atomic swap, refusal of bad artifacts, variant switch."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from tests.api.conftest import ADMIN_HEADERS, MODEL_NAME, corrupt_copy, make_settings, private_store, rank_body


@pytest.fixture(scope="module")
def admin_store(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return private_store(store, tmp_path_factory)


@pytest.fixture(scope="module")
def admin_client(admin_store: Path) -> Iterator[TestClient]:
    """One app for the module: tests that reload or switch run last or restore what they change."""
    with TestClient(create_app(make_settings(admin_store, model_version="v1"))) as test_client:
        yield test_client


def test_admin_endpoints_are_off_without_a_configured_token(store: Path) -> None:
    no_admin = TestClient(create_app(make_settings(store, model_version="v1", admin_token=None)))  # no model needed
    response = no_admin.post("/admin/reload", headers=ADMIN_HEADERS)
    assert response.status_code == 403 and response.json()["error"]["code"] == "admin_disabled"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"},
                                     {"Authorization": "Basic dGVzdDp0ZXN0"}])
def test_admin_endpoints_need_the_bearer_token(admin_client: TestClient, headers: dict) -> None:
    response = admin_client.post("/admin/variant", json={"variant": "vani"}, headers=headers)
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    assert admin_client.get("/v1/models").json()["routing"]["default_variant"] == "auto"  # the default, unchanged


def test_reload_of_a_corrupted_artifact_is_refused_and_the_old_model_keeps_serving(
    admin_client: TestClient, admin_store: Path, schema
) -> None:
    corrupt_copy(admin_store, "v1", "v1-corrupted")
    response = admin_client.post("/admin/reload", json={"version": "v1-corrupted"}, headers=ADMIN_HEADERS)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "model_rejected" and "sha256" in response.json()["error"]["message"]
    served = admin_client.post("/rank", json=rank_body(schema, n=5))
    assert served.status_code == 200 and served.headers["x-model-version"] == "v1"


def test_reload_of_a_mismatching_artifact_is_refused(admin_client: TestClient, admin_store: Path) -> None:
    mismatched = admin_store / MODEL_NAME / "v1-mismatch"
    if not mismatched.exists():
        shutil.copytree(admin_store / MODEL_NAME / "v1", mismatched)
        manifest = json.loads((mismatched / "model.json").read_text())
        for feature in manifest["feature_schema"]["features"]:  # the program no longer takes this schema
            if feature["kind"] == "dense":
                feature["dim"] += 1
        (mismatched / "model.json").write_text(json.dumps(manifest))
    for version in ("v1-mismatch", "no-such-version", "../v1"):
        response = admin_client.post("/admin/reload", json={"version": version}, headers=ADMIN_HEADERS)
        assert response.status_code in (409, 422), version
        assert admin_client.get("/v1/models").json()["version"] == "v1"


def test_variant_switch_changes_the_serving_variant_and_validates_the_split(admin_client: TestClient, schema) -> None:
    switched = admin_client.post("/admin/variant", json={"variant": "uoi"}, headers=ADMIN_HEADERS)
    assert switched.status_code == 200 and switched.json()["default_variant"] == "uoi"
    assert admin_client.post("/rank", json=rank_body(schema, n=3)).headers["x-variant"] == "uoi"
    admin_client.post("/admin/variant", json={"variant": "mari"}, headers=ADMIN_HEADERS)
    bad = admin_client.post("/admin/variant", json={"variant": "uoi", "ab_split": {"mari": -1}}, headers=ADMIN_HEADERS)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "ab_split"
    unknown = admin_client.post("/admin/variant", json={"variant": "turbo"}, headers=ADMIN_HEADERS)
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "variant"
    assert "auto" in unknown.json()["error"]["message"]  # the four choices are named
    back = admin_client.post("/admin/variant", json={"variant": "auto"}, headers=ADMIN_HEADERS)
    assert back.status_code == 200 and back.json()["default_variant"] == "auto"
    assert admin_client.post("/rank", json=rank_body(schema, n=3)).headers["x-variant"] in ("vani", "uoi", "mari")
    admin_client.post("/admin/variant", json={"variant": "mari"}, headers=ADMIN_HEADERS)  # as the next test expects


def test_models_endpoint_reports_variants_routing_shadow_and_flops(admin_client: TestClient) -> None:
    info = admin_client.get("/v1/models").json()
    assert set(info["variants"]) == {"vani", "uoi", "mari"}
    assert info["routing"] == {"default_variant": "mari", "ab_split": {}}  # the switch test above left MaRI
    assert info["shadow"]["variant"] is None and info["shadow"]["tolerance"] == 1e-5
    flops = info["flops"]["flops"]
    assert info["flops"]["n"] == 100
    assert flops["mari"]["flops"] < flops["vani"]["flops"]
    assert {spec["name"] for spec in info["feature_schema"]["features"]} >= {"user_id", "item_id"}


def test_reload_swaps_to_the_new_version_and_scores_change(admin_client: TestClient, schema) -> None:
    body = rank_body(schema, n=10)
    before = admin_client.post("/rank", json=body).json()
    response = admin_client.post("/admin/reload", json={"version": "v2"}, headers=ADMIN_HEADERS)
    assert response.status_code == 200
    assert response.json()["version"] == "v2" and response.json()["previous_version"] == "v1"
    after = admin_client.post("/rank", json=body)
    assert after.headers["x-model-version"] == "v2"
    assert after.json()["scores"] != before["scores"]
    assert admin_client.get("/v1/models").json()["version"] == "v2"
