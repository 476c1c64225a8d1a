"""Several models served by one server (RANKER_MODELS): each at POST /rank/{model} with its own weights, the
default at /rank, all listed by /v1/models and reached by the V2 door, metrics labelled by model and version,
admission bounds per model, and start-up refused beyond RANKER_MAX_MODELS."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import tritonclient.http as triton

from service.api.app import create_app
from service.engine import Variant
from service.features.schema import FeatureSchema
from service.serving.build import build_variants
from service.serving.codec import RequestCodec
from service.serving.settings import Settings
from service.store import load_artifact
from tests.api.conftest import ADMIN_HEADERS, ADMIN_TOKEN, make_settings, rank_body
from tests.api.live_server import LiveServer
from tests.api.metrics_text import parse_metrics, value
from tests.api.test_reliability_startup import run_cli
from tests.api.v2_requests import feature_arrays, infer_inputs, request_body
from tests.ports import free_port

ALPHA, BETA = "alpha", "beta"  # alpha is the default model (RANKER_MODEL_NAME)
TOLERANCE = 1e-5  # docs/ARCHITECTURE.md section 3, fp32: MaRI against the eager model
WAIT_S = 30.0  # a bound on waiting for the blocked slot, not a claim about speed
CONVERGE_S = 180.0  # a bound on a second worker building both models and polling serving.json
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of two small models trained with different seeds (different scores for the same request)."""
    from tests.small_artifacts import save_small_mmoe

    root = tmp_path_factory.mktemp("two_models")
    save_small_mmoe(root, ALPHA, "v1", seed=1)
    save_small_mmoe(root, BETA, "v1", seed=2)
    return root


@pytest.fixture(scope="module")
def schema_of_both(two_models: Path) -> FeatureSchema:
    schemas = [load_artifact(two_models / name / "v1").schema for name in (ALPHA, BETA)]
    assert schemas[0].to_dict() == schemas[1].to_dict()  # one request body fits both
    return schemas[0]


@pytest.fixture(scope="module")
def live(two_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"RANKER_MODEL_STORE": str(two_models), "RANKER_MODEL_NAME": ALPHA, "RANKER_MODELS": f"{ALPHA},{BETA}",
           "RANKER_VARIANT": "mari", "RANKER_WARMUP_CANDIDATES": "[1, 16]", "RANKER_ANALYSIS_CANDIDATES": "100",
           "RANKER_TORCH_THREADS": "1", "RANKER_CONFIG_POLL_S": "0", "RANKER_ADMIN_TOKEN": ADMIN_TOKEN}
    with LiveServer(env, log_path=tmp_path_factory.mktemp("logs") / "server.log") as server:
        yield server


def _eager_scores(store: Path, name: str, body: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The stored model as VanI (the trained graph, no transformation) on the request, as test_auto_live.py."""
    loaded = load_artifact(store / name / "v1")
    vani = build_variants(loaded.model, loaded.manifest.user_features, loaded.schema.example_batch,
                          variants=(Variant.VANI,))[Variant.VANI].module
    settings = Settings()
    codec = RequestCodec(loaded.schema, max_candidates=settings.max_candidates, max_id=settings.max_id,
                         sequence_overflow=settings.sequence_overflow)
    with torch.inference_mode():
        scores: dict[str, torch.Tensor] = vani(codec.read(json.dumps(body).encode()).encoded.features)
    return scores


def _assert_scores(answer: dict[str, Any], expected: dict[str, torch.Tensor]) -> None:
    for task in answer["tasks"]:
        assert torch.allclose(torch.tensor(answer["scores"][task]), expected[task], atol=TOLERANCE, rtol=0), task


def test_each_model_scores_with_its_own_weights_and_rank_is_the_default(
    live: LiveServer, two_models: Path, schema_of_both: FeatureSchema
) -> None:
    body = rank_body(schema_of_both, n=30, seed=5)
    answers = {path: httpx.post(f"{live.url}{path}", json=body, timeout=60) for path in
               ("/rank", f"/rank/{ALPHA}", f"/rank/{BETA}")}
    for path, response in answers.items():
        assert response.status_code == 200, (path, response.text)
    assert answers["/rank"].headers["x-model-name"] == answers[f"/rank/{ALPHA}"].json()["model"]["name"] == ALPHA
    assert answers[f"/rank/{BETA}"].headers["x-model-name"] == BETA
    _assert_scores(answers["/rank"].json(), _eager_scores(two_models, ALPHA, body))
    _assert_scores(answers[f"/rank/{ALPHA}"].json(), _eager_scores(two_models, ALPHA, body))
    beta = _eager_scores(two_models, BETA, body)
    _assert_scores(answers[f"/rank/{BETA}"].json(), beta)
    task = answers["/rank"].json()["tasks"][0]  # the two models really differ: the routing is what is tested
    assert not torch.allclose(torch.tensor(answers["/rank"].json()["scores"][task]), beta[task], atol=1e-3)


def test_a_model_not_served_is_a_404_naming_the_field_and_the_served_models(
    live: LiveServer, schema_of_both: FeatureSchema
) -> None:
    body = rank_body(schema_of_both, n=3)
    response = httpx.post(f"{live.url}/rank/gamma", json=body, timeout=30)
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("unknown_model", "model")
    assert "gamma" in error["message"] and f"{ALPHA}, {BETA}" in error["message"]
    v2 = httpx.post(f"{live.url}/v2/models/gamma/infer", content=b"{}", timeout=30)
    assert v2.status_code == 404 and set(v2.json()) == {"error"} and ALPHA in v2.json()["error"]
    reload = httpx.post(f"{live.url}/admin/reload", json={"model": "gamma"}, headers=ADMIN_HEADERS, timeout=30)
    assert reload.status_code == 404 and reload.json()["error"]["code"] == "unknown_model"


def test_v1_models_lists_every_model_with_its_version_and_state(live: LiveServer) -> None:
    info = httpx.get(f"{live.url}/v1/models", timeout=30).json()
    assert (info["name"], info["version"]) == (ALPHA, "v1")  # the default model, as before
    assert set(info["models"]) == {ALPHA, BETA}
    for name, entry in info["models"].items():
        assert (entry["name"], entry["version"], entry["state"]) == (name, "v1", "ready")
        assert entry["routing"]["default_variant"] == "mari" and entry["config"]["generation"] == 0
    assert httpx.get(f"{live.url}/readyz", timeout=30).status_code == 200
    assert httpx.get(f"{live.url}/v2/health/ready", timeout=30).status_code == 200


def test_the_v2_door_serves_each_model_by_name(live: LiveServer, schema_of_both: FeatureSchema) -> None:
    request = rank_body(schema_of_both, n=12, seed=8)
    client = triton.InferenceServerClient(live.url.removeprefix("http://"), network_timeout=60.0)
    try:
        for name in (ALPHA, BETA):
            assert client.is_model_ready(name)
            assert client.get_model_metadata(name)["name"] == name
            result = client.infer(name, infer_inputs(schema_of_both, feature_arrays(schema_of_both, request)))
            expected = httpx.post(f"{live.url}/rank/{name}", json=request, timeout=60).json()
            assert result.get_response()["model_name"] == name
            for task in expected["tasks"]:
                assert torch.allclose(torch.tensor(result.as_numpy(task)), torch.tensor(expected["scores"][task]),
                                      atol=TOLERANCE, rtol=0)
    finally:
        client.close()


def test_metrics_carry_the_served_model_and_version_never_the_clients_name(
    live: LiveServer, schema_of_both: FeatureSchema
) -> None:
    before = parse_metrics(httpx.get(f"{live.url}/metrics", timeout=30).text)
    body = rank_body(schema_of_both, n=7, seed=3)
    for path in (f"/rank/{BETA}", f"/rank/{BETA}", "/rank", "/rank/not-a-model"):
        httpx.post(f"{live.url}{path}", json=body, timeout=60)
    v2, _ = request_body(infer_inputs(schema_of_both, feature_arrays(schema_of_both, body), binary=False))
    assert httpx.post(f"{live.url}/v2/models/{BETA}/infer", content=v2, timeout=60).status_code == 200
    after = parse_metrics(httpx.get(f"{live.url}/metrics", timeout=30).text)
    moved = lambda metric, **labels: value(after, metric, **labels) - value(before, metric, **labels)  # noqa: E731
    assert moved("ranker_requests_total", model=BETA, variant="mari", status="200") == 2
    assert moved("ranker_requests_total", model=ALPHA, variant="mari", status="200") == 1
    assert moved("ranker_requests_total", model="unknown", variant="none", status="404") == 1
    assert moved("ranker_v2_requests_total", model=BETA, variant="mari", status="200") == 1
    assert moved("ranker_candidates_scored_total", model=BETA, version="v1", variant="mari") == 3 * 7
    assert moved("ranker_request_duration_seconds_count", model=ALPHA, version="v1", variant="mari") == 1
    assert moved("ranker_stage_duration_seconds_count", model=BETA, stage="infer", variant="mari") == 3
    labels = {dict(sample_labels).get("model") for _, sample_labels in after}
    assert "not-a-model" not in labels


def test_an_admin_change_names_its_model_and_leaves_the_others_alone(live: LiveServer) -> None:
    switched = httpx.post(f"{live.url}/admin/variant", json={"model": BETA, "variant": "vani"},
                          headers=ADMIN_HEADERS, timeout=60)
    assert switched.status_code == 200, switched.text
    assert switched.json()["model"] == BETA and switched.json()["default_variant"] == "vani"
    models = httpx.get(f"{live.url}/v1/models", timeout=30).json()["models"]
    assert models[BETA]["routing"]["default_variant"] == "vani" and models[BETA]["config"]["generation"] == 1
    assert models[ALPHA]["routing"]["default_variant"] == "mari" and models[ALPHA]["config"]["generation"] == 0
    samples = parse_metrics(httpx.get(f"{live.url}/metrics", timeout=30).text)
    generations = {dict(labels)["model"]: generation for (name, labels), generation in samples.items()
                   if name == "ranker_config_generation"}
    assert generations == {ALPHA: 0, BETA: 1}  # one series per model: each serving.json converges on its own


def test_a_full_queue_of_one_model_does_not_refuse_another(two_models: Path, schema_of_both: FeatureSchema) -> None:
    """Alpha's only slot is held and it may queue nothing: a second alpha request is refused at once (503), while
    beta, with its own slot and queue, still answers 200."""
    app = create_app(make_settings(two_models, model_name=ALPHA, models=[ALPHA, BETA], max_queued_requests=0,
                                   queue_timeout_s=WAIT_S, config_poll_s=0))
    alpha = app.state.service.host(ALPHA).scorer
    entered, release = threading.Event(), threading.Event()
    score = alpha._score_on_slot

    def held_score(*args: Any) -> Any:  # holds alpha's slot until the test lets it go
        entered.set()
        release.wait(WAIT_S)
        return score(*args)

    alpha._score_on_slot = held_score
    body = json.dumps(rank_body(schema_of_both, n=5)).encode()

    async def run() -> tuple[int, int, int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
                holder = asyncio.create_task(http.post(f"/rank/{ALPHA}", content=body, headers=JSON))
                assert await asyncio.to_thread(entered.wait, WAIT_S)
                refused = await http.post(f"/rank/{ALPHA}", content=body, headers=JSON)
                served = await http.post(f"/rank/{BETA}", content=body, headers=JSON)
                release.set()
                return (await holder).status_code, refused.status_code, served.status_code

    try:
        holder_status, alpha_status, beta_status = asyncio.run(run())
    finally:
        release.set()
    assert (holder_status, alpha_status, beta_status) == (200, 503, 200)


def test_serve_refuses_more_models_than_max_models_in_one_line(two_models: Path) -> None:
    result = run_cli(["serve", "--port", str(free_port())],
                     {"RANKER_MODEL_STORE": str(two_models), "RANKER_MODEL_NAME": ALPHA, "RANKER_MODELS": "*",
                      "RANKER_MAX_MODELS": "1"})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "RANKER_MAX_MODELS=1" in result.stderr and "RANKER_MODELS" in result.stderr


def test_two_workers_serve_both_models_and_follow_each_models_own_fleet_config(
    two_models: Path, schema_of_both: FeatureSchema, tmp_path: Path
) -> None:
    """`ranker serve --workers 2`: the metrics of both workers are summed per model (in every scrape, whichever
    worker answers it), and `ranker config set --name beta` moves beta's generation in every worker while alpha's
    stays."""
    store = tmp_path / "store"  # this test's own serving.json files
    shutil.copytree(two_models, store, ignore=shutil.ignore_patterns("serving.json", ".*"))
    env = {"RANKER_MODEL_STORE": str(store), "RANKER_MODEL_NAME": ALPHA, "RANKER_MODELS": f"{ALPHA},{BETA}",
           "RANKER_VARIANT": "mari", "RANKER_WARMUP_CANDIDATES": "[1, 16]", "RANKER_ANALYSIS_CANDIDATES": "100",
           "RANKER_TORCH_THREADS": "1", "RANKER_CONFIG_POLL_S": "0.2"}
    body = json.dumps(rank_body(schema_of_both, n=4)).encode()
    with LiveServer(env, workers=2, log_path=tmp_path / "workers.log") as server:
        for _ in range(8):  # a fresh connection each time: the kernel spreads them over the workers
            with httpx.Client(timeout=60, headers=JSON) as http:
                assert http.post(f"{server.url}/rank/{BETA}", content=body).status_code == 200
        for _ in range(6):  # every scrape, whichever worker answers it, sees the requests of both workers
            with httpx.Client(timeout=30) as http:
                scraped = parse_metrics(http.get(f"{server.url}/metrics").text)
            assert value(scraped, "ranker_requests_total", model=BETA, variant="mari", status="200") == 8
            assert value(scraped, "ranker_candidates_scored_total", model=BETA, version="v1", variant="mari") == 8 * 4
        written = run_cli(["config", "set", "--store", str(store), "--name", BETA, "--variant", "vani"], {})
        assert written.returncode == 0, written.stderr
        deadline = time.monotonic() + CONVERGE_S
        while True:  # both workers (the second may still be starting) apply beta's generation 1
            samples = parse_metrics(httpx.get(f"{server.url}/metrics", timeout=30).text)
            generations = {(dict(labels)["model"], dict(labels)["pid"]): generation
                           for (name, labels), generation in samples.items() if name == "ranker_config_generation"}
            if sorted(generations.values()) == [0, 0, 1, 1] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert value(samples, "ranker_requests_total", model=BETA, variant="mari", status="200") == 8
    assert len({pid for _, pid in generations}) == 2, generations
    assert {model: generation for (model, _), generation in generations.items()} == {ALPHA: 0, BETA: 1}
