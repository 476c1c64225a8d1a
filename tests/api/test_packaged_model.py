"""A user's own ranker, packaged with package(), served by a real `ranker serve` with every service feature."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from service.features.schema import FeatureSchema, Kind
from service.store import package
from tests.api.conftest import ADMIN_HEADERS, ADMIN_TOKEN, rank_body
from tests.api.live_server import LiveServer
from tests.api.metrics_text import parse_metrics, total
from tests.store.my_ranker import build

NAME = "my_ranker"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, FeatureSchema]:
    store = tmp_path_factory.mktemp("user_store")
    model, example, schema, options = build(seed=1)
    package(model, example, schema, store=store, name=NAME, version="v1", **options)
    return store, model, schema


@pytest.fixture(scope="module")
def live(packaged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    store = packaged[0]
    env = {
        "RANKER_MODEL_STORE": str(store), "RANKER_MODEL_NAME": NAME, "RANKER_ADMIN_TOKEN": ADMIN_TOKEN,
        "RANKER_WARMUP_CANDIDATES": "[1, 16]", "RANKER_ANALYSIS_CANDIDATES": "100", "RANKER_TORCH_THREADS": "1",
        "RANKER_AB_SPLIT": '{"mari": 0.5, "uoi": 0.5}', "RANKER_SHADOW_VARIANT": "vani",
        "RANKER_SHADOW_SAMPLE_RATE": "1.0",
    }
    with LiveServer(env, log_path=tmp_path_factory.mktemp("logs") / "server.log") as server:
        yield server


def _eager_scores(model: torch.nn.Module, schema: FeatureSchema, body: dict) -> dict[str, torch.Tensor]:
    """The user's own model on the request, tiled as VanI would: the reference the service must match."""
    n = len(body["candidates"][schema.candidate_features[0].name])
    features = {}
    for spec in schema.features:
        values = [body["user"][spec.name]] * n if spec.is_user else body["candidates"][spec.name]
        dtype = torch.float32 if spec.kind is Kind.DENSE else torch.int64
        features[spec.name] = torch.tensor(values, dtype=dtype)
    with torch.no_grad():
        logits = model(features)
    return {"click": torch.sigmoid(logits[:, 0]), "like": torch.sigmoid(logits[:, 1])}


def test_a_packaged_model_is_served_with_scores_equal_to_the_users_eager_model(live: LiveServer, packaged) -> None:
    _, model, schema = packaged
    arms = set()
    for seed, n in enumerate((1, 7, 300, 30, 2)):
        body = rank_body(schema, n=n, columnar=seed % 2 == 0, seed=seed)
        if seed % 2:  # row-wise form: the reference reads columns
            columns = {name: [row[name] for row in body["candidates"]] for name in body["candidates"][0]}
            reference = _eager_scores(model, schema, {**body, "candidates": columns})
        else:
            reference = _eager_scores(model, schema, body)
        response = httpx.post(f"{live.url}/rank", json=body, timeout=30)
        assert response.status_code == 200, response.text
        served = response.json()
        arms.add(response.headers["x-variant"])
        for task, want in reference.items():
            got = torch.tensor(served["scores"][task])
            assert got.shape == want.shape and (got - want).abs().max().item() <= TOLERANCE
    assert arms <= {"mari", "uoi"}


def test_models_endpoint_describes_the_packaged_model_and_every_variant_built(live: LiveServer) -> None:
    described = httpx.get(f"{live.url}/v1/models", timeout=10).json()
    assert described["name"] == NAME and described["source"]["kind"] == "packaged"
    assert described["source"]["model_class"] == "tests.store.my_ranker.Adapter"
    assert described["user_features"] == ["user_id", "user_city", "user_dense"]
    assert described["tasks"] == ["click", "like"] and described["task_weights"]["like"] == 0.5
    for variant in ("vani", "uoi", "mari"):
        assert described["variants"][variant]["variant"] == variant, described["variants"][variant]
    assert described["routing"]["ab_split"] == {"uoi": 0.5, "mari": 0.5}


def test_bad_input_to_a_packaged_model_is_a_4xx_naming_the_field(live: LiveServer, packaged) -> None:
    body = rank_body(packaged[2], n=3)
    body["user"]["user_dense"] = [1.0, 2.0]
    response = httpx.post(f"{live.url}/rank", json=body, timeout=10)
    assert response.status_code == 422 and response.json()["error"]["field"].endswith("user_dense")


def test_shadow_never_mismatches_and_reload_serves_a_new_packaged_version(live: LiveServer, packaged) -> None:
    store, _, schema = packaged
    metrics = parse_metrics(httpx.get(f"{live.url}/metrics", timeout=10).text)
    assert total(metrics, "ranker_shadow_mismatches_total") == 0
    model, example, schema_v2, options = build(seed=2)
    package(model, example, schema_v2, store=store, name=NAME, version="v2", **options)
    reloaded = httpx.post(f"{live.url}/admin/reload", json={}, headers=ADMIN_HEADERS, timeout=120)
    assert reloaded.status_code == 200, reloaded.text
    body = rank_body(schema, n=5, columnar=True, seed=3)
    response = httpx.post(f"{live.url}/rank", json=body, timeout=30)
    assert response.headers["x-model-version"] == "v2"
    want = _eager_scores(model, schema, body)["click"]
    assert (torch.tensor(response.json()["scores"]["click"]) - want).abs().max().item() <= TOLERANCE
