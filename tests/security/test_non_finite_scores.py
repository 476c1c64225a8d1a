"""Scores are never NaN or inf in a 200: finite but huge dense inputs that drive a healthy model past float32
get a 422 naming the likely feature; a model whose warm-up scores are not finite is never served."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import tritonclient.http as triton
from fastapi.testclient import TestClient
from torch import nn

from service.api.app import create_app
from service.engine import Variant
from service.features.schema import FeatureSchema, FeatureSpec, Kind
from service.serving import loading
from service.serving.errors import InvalidRequest, ModelRejected
from service.serving.example_request import example_request
from service.serving.loading import build_serving_model
from service.serving.scorer import check_finite
from service.serving.serving_model import Scored, ServingModel
from service.store import package
from tests.api.conftest import make_settings
from tests.api.v2_requests import feature_arrays, infer_inputs, request_body

HUGE = 3e38  # finite in float32 (max 3.4028e38): a valid dense value per the request rules
SCHEMA = FeatureSchema((FeatureSpec("user_id", "user", "sparse_id", vocab_size=50),
                        FeatureSpec("user_dense", "user", "dense", dim=4),
                        FeatureSpec("item_id", "item", "sparse_id", vocab_size=80),
                        FeatureSpec("item_dense", "item", "dense", dim=3)))


class NormalizedRanker(nn.Module):
    """A ranker that layer-normalizes its dense inputs, as many do: healthy on ordinary values, and NaN once
    a dense value is near float32's maximum (the mean and variance overflow)."""

    def __init__(self) -> None:
        super().__init__()
        self.users, self.items = nn.Embedding(51, 4), nn.Embedding(81, 4)
        self.norm = nn.LayerNorm(7)
        self.mlp = nn.Sequential(nn.Linear(15, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        dense = self.norm(torch.cat([f["user_dense"], f["item_dense"]], 1))
        return self.mlp(torch.cat([self.users(f["user_id"]), self.items(f["item_id"]), dense], 1))  # [N, 2]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    store = tmp_path_factory.mktemp("non_finite_store")
    package(NormalizedRanker().eval(), SCHEMA.example_batch(8), SCHEMA, tasks=["click", "like"], scores="logit",
            store=store, name="normalized", version="v1")
    return store


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN/Infinity, as strict parsers in other languages do."""
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def huge_request(schema: FeatureSchema) -> tuple[dict[str, Any], str]:
    """An ordinary request whose first user dense feature is all HUGE, and that feature's field name."""
    feature = next(spec.name for spec in schema.user_features if spec.kind is Kind.DENSE)
    request = example_request(schema, n=5, seed=3)
    request["user"][feature] = [HUGE] * len(request["user"][feature])
    return request, f"user.{feature}"


def encode(serving: ServingModel, request: dict[str, Any]) -> dict[str, torch.Tensor]:
    return serving.codec.encode(serving.codec.decode(json.dumps(request).encode())).features


@pytest.fixture(scope="module")
def serving(packaged: Path) -> ServingModel:
    return build_serving_model(make_settings(packaged, model_name="normalized"), packaged / "normalized" / "v1")


@pytest.mark.parametrize("variant", list(Variant))
def test_every_variant_refuses_scores_that_huge_finite_inputs_make_non_finite(
    serving: ServingModel, variant: Variant
) -> None:
    request, field = huge_request(serving.codec.schema)
    features = encode(serving, request)
    scores = serving.score(variant, features)
    # Precondition: the model really goes non-finite here, so the assertion below proves the check.
    assert not all(bool(torch.isfinite(scores[task]).all()) for task in serving.tasks)
    outcome = check_finite(serving, features, scores)
    assert isinstance(outcome, InvalidRequest)
    assert (outcome.code, outcome.field) == ("non_finite_scores", field)


def test_finite_scores_pass_the_check_unchanged_with_their_final_scores(serving: ServingModel) -> None:
    features = encode(serving, example_request(serving.codec.schema, n=7, seed=1))
    scores = serving.score(Variant.MARI, features)
    outcome = check_finite(serving, features, scores)
    assert isinstance(outcome, Scored) and outcome.scores is scores
    weighted = sum(float(serving.manifest["task_weights"][task]) * scores[task] for task in serving.tasks)
    torch.testing.assert_close(outcome.final, weighted)


@pytest.fixture(scope="module")
def client(packaged: Path) -> Iterator[TestClient]:
    settings = make_settings(packaged, model_name="normalized", config_poll_s=0)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_rank_answers_422_in_strict_json_not_200_with_nan(client: TestClient) -> None:
    request, field = huge_request(SCHEMA)
    response = client.post("/rank", json=request)
    body = strict_json(response.text)
    assert response.status_code == 422, body
    assert body["error"]["code"] == "non_finite_scores"
    assert body["error"]["field"] == field
    ordinary = client.post("/rank", json=example_request(SCHEMA, n=5, seed=3))
    assert ordinary.status_code == 200
    assert all(math.isfinite(value) for value in strict_json(ordinary.text)["final_scores"])


def test_v2_infer_answers_a_v2_400_not_200_with_nan(client: TestClient) -> None:
    request, field = huge_request(SCHEMA)
    for binary in (True, False):
        body, json_size = request_body(infer_inputs(SCHEMA, feature_arrays(SCHEMA, request), binary=binary))
        headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
        response = client.post("/v2/models/normalized/infer", content=body, headers=headers)
        error = strict_json(response.text)
        assert response.status_code == 400 and list(error) == ["error"], error
        assert field in error["error"] and "non-finite" in error["error"]
    ordinary = example_request(SCHEMA, n=5, columnar=True, seed=3)
    body, _ = request_body(infer_inputs(SCHEMA, feature_arrays(SCHEMA, ordinary), binary=False),
                           [triton.InferRequestedOutput("final_scores", binary_data=False)])
    response = client.post("/v2/models/normalized/infer", content=body)
    assert response.status_code == 200
    assert all(math.isfinite(value) for value in strict_json(response.text)["outputs"][0]["data"])


class _NaNScores(nn.Module):
    """What a NaN weight that slipped past the loader would make: every score NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.ranker = NormalizedRanker()
        self.register_buffer("nan", torch.tensor(float("nan")))

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.ranker(features) + self.nan  # [N, 2]
        return {"click": logits[:, 0], "like": logits[:, 1]}


def test_a_model_with_non_finite_warm_up_scores_is_refused(packaged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_load = loading.load_artifact
    monkeypatch.setattr(loading, "load_artifact",
                        lambda path: dataclasses.replace(real_load(path), model=_NaNScores().eval()))
    with pytest.raises(ModelRejected, match="scores are not finite"):
        build_serving_model(make_settings(packaged, model_name="normalized"), packaged / "normalized" / "v1")
