"""The default `auto` in-process: each request runs the form measured fastest at its size, metrics name that form,
a configured variant or A/B arm runs exactly what it names, and /v1/models shows the measured table.

Which form is fastest depends on the machine, so the routing tests install a measured table of their own
(FastestForms, as the start-up measurement makes it); /v1/models is checked on the real measurement's shape.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.engine import Variant
from service.serving.fastest import AUTO_TIE, FastestForms
from service.serving.routing import Auto, VariantRouter
from service.serving.runtime import ModelRuntime
from tests.api.conftest import MODEL_NAME, make_settings, private_store, rank_body
from tests.api.metrics_text import parse_metrics, total, value

TOLERANCE = 1e-5  # docs/ARCHITECTURE.md section 3, fp32
# Warm-up sizes (1, 16): N = 1..3 is nearer 1 on a log scale, N >= 5 nearer 16.
TABLE = FastestForms({1: {Variant.VANI: 1.0, Variant.UOI: 2.0, Variant.MARI: 3.0},
                      16: {Variant.VANI: 3.0, Variant.UOI: 2.0, Variant.MARI: 1.0}})


@pytest.fixture(scope="module")
def client(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app on the default settings (variant unset: auto), warm-up sizes 1 and 16."""
    with TestClient(create_app(make_settings(private_store(store, tmp_path_factory), model_version="v1"))) as client:
        yield client


def _runtime(client: TestClient) -> ModelRuntime:
    runtime: ModelRuntime = client.app.state.service.runtime  # type: ignore[attr-defined]
    return runtime


@pytest.fixture
def measured(client: TestClient) -> Iterator[ModelRuntime]:
    """The app serving TABLE as its measurement (the rest of the model as built); restored afterwards."""
    runtime = _runtime(client)
    active = runtime.active
    runtime.activate(dataclasses.replace(active.serving, fastest=TABLE), active.router, active.generation)
    yield runtime
    runtime.activate(active.serving, active.router, active.generation)


def _rank(client: TestClient, schema, n: int) -> dict:
    body = rank_body(schema, n=n, seed=n)
    response = client.post("/rank", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["variant"] == response.headers["x-variant"]
    return {**response.json(), "body": body}


def test_auto_runs_per_request_size_the_form_measured_fastest_with_scores_equal_to_vanis(
    client: TestClient, measured: ModelRuntime, schema
) -> None:
    serving = measured.serving
    assert measured.router.default is Auto.AUTO
    before = parse_metrics(client.get("/metrics").text)
    served = {n: _rank(client, schema, n) for n in (1, 3, 5, 30)}
    assert {n: data["variant"] for n, data in served.items()} == {1: "vani", 3: "vani", 5: "mari", 30: "mari"}
    for data in served.values():
        features = serving.codec.read(json.dumps(data["body"]).encode()).encoded.features
        vani = serving.score(Variant.VANI, features)
        for task in serving.tasks:
            assert torch.allclose(torch.tensor(data["scores"][task]), vani[task], atol=TOLERANCE, rtol=0)
    after = parse_metrics(client.get("/metrics").text)
    for form, count in (("vani", 2), ("mari", 2), ("uoi", 0)):
        assert value(after, "ranker_auto_requests_total", model=MODEL_NAME, variant=form) - value(
            before, "ranker_auto_requests_total", model=MODEL_NAME, variant=form) == count
        assert value(after, "ranker_requests_total", model=MODEL_NAME, variant=form, status="200") - value(
            before, "ranker_requests_total", model=MODEL_NAME, variant=form, status="200") == count
    assert total(after, "ranker_requests_total", variant="auto") == 0  # never a label value


def test_a_configured_variant_or_ab_arm_runs_exactly_what_it_names_at_every_size(
    client: TestClient, measured: ModelRuntime, schema
) -> None:
    before = parse_metrics(client.get("/metrics").text)
    active = measured.active
    measured.activate(active.serving, VariantRouter(Variant.UOI, {}), active.generation)
    assert [_rank(client, schema, n)["variant"] for n in (1, 30)] == ["uoi", "uoi"]
    measured.activate(active.serving, VariantRouter(Auto.AUTO, {Variant.UOI: 1.0}), active.generation)
    assert [_rank(client, schema, n)["variant"] for n in (1, 30)] == ["uoi", "uoi"]  # every user in the UOI arm
    measured.activate(active.serving, VariantRouter(Auto.AUTO, {}), active.generation)
    assert [_rank(client, schema, n)["variant"] for n in (1, 30)] == ["vani", "mari"]  # no A/B: auto again
    after = parse_metrics(client.get("/metrics").text)
    assert value(after, "ranker_auto_requests_total", model=MODEL_NAME, variant="uoi") == value(
        before, "ranker_auto_requests_total", model=MODEL_NAME, variant="uoi")


def test_v1_models_shows_every_form_measured_at_each_warm_up_size_and_the_one_auto_serves(client: TestClient) -> None:
    info = client.get("/v1/models").json()
    assert info["routing"]["default_variant"] == "auto"
    auto = info["auto"]
    assert auto["default"] is True and auto["measured_s"] > 0
    assert set(auto["by_candidates"]) == {"1", "16"}
    assert all(report["variant"] == v for v, report in info["variants"].items())  # three distinct forms here
    for size in auto["by_candidates"].values():
        assert set(size["median_ms"]) == {"vani", "uoi", "mari"} and all(ms > 0 for ms in size["median_ms"].values())
        fastest = min(size["median_ms"].values())  # or a form with less arithmetic within the tie band
        assert fastest <= size["median_ms"][size["fastest"]] <= fastest * (1 + AUTO_TIE) + 1e-4  # shown rounded
    runtime = _runtime(client)
    assert {str(n): v.value for n, v in runtime.serving.fastest.fastest.items()} == {
        n: size["fastest"] for n, size in auto["by_candidates"].items()}
