"""The Open Inference Protocol (KServe V2) door against a real `ranker serve`, driven by the real tritonclient:
health, metadata, infer with binary tensor data on and off equal to /rank's scores, A/B routing by
parameters.user_id, and every kind of bad input answered 400 (404, 413, 415) in V2's {"error": "..."} shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from service.api.app import create_app
from service.api.errors import error_response
from service.engine import Variant
from service.features.schema import FeatureSchema, Kind
from service.serving.errors import InvalidRequest, ModelNotFound, Overloaded
from service.serving.example_request import example_request
from service.serving.routing import VariantRouter
from tests.api.conftest import make_settings, private_store
from tests.api.live_server import LiveServer
from tests.api.metrics_text import parse_metrics, total, value
from tests.api.v2_requests import feature_arrays, infer_inputs, request_body

MODEL = "default"
MAX_BODY_BYTES = 200_000
AB_SPLIT = {"mari": 1, "vani": 1}
TOLERANCE = 1e-6  # same variant, same inputs: the same float32 scores


@pytest.fixture(scope="module")
def live(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {
        "RANKER_MODEL_STORE": str(private_store(store, tmp_path_factory)), "RANKER_MODEL_VERSION": "v1",
        "RANKER_WARMUP_CANDIDATES": "[1, 16]", "RANKER_ANALYSIS_CANDIDATES": "100", "RANKER_TORCH_THREADS": "1",
        "RANKER_CONFIG_POLL_S": "0", "RANKER_DRAIN_DELAY_S": "0", "RANKER_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "RANKER_AB_SPLIT": json.dumps(AB_SPLIT), "RANKER_VARIANT": "mari",
        "RANKER_SHADOW_VARIANT": "uoi", "RANKER_SHADOW_SAMPLE_RATE": "1.0",
    }
    log = tmp_path_factory.mktemp("logs") / "v2_server.log"
    with LiveServer(env, log_path=log) as server:
        yield server
    assert "Traceback" not in log.read_text()


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[triton.InferenceServerClient]:
    triton_client = triton.InferenceServerClient(live.url.removeprefix("http://"), network_timeout=60.0)
    yield triton_client
    triton_client.close()


def user_in_arm(variant: Variant) -> str:
    router = VariantRouter(Variant.MARI, {Variant(v): w for v, w in AB_SPLIT.items()})
    return next(f"user-{i}" for i in range(1000) if router.route(f"user-{i}") is variant)


def rank(live: LiveServer, request: dict[str, Any]) -> tuple[dict[str, Any], str]:
    response = httpx.post(f"{live.url}/rank", json={**request, "top_k": None}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json(), response.headers["x-variant"]


def post_v2(live: LiveServer, body: bytes, header_length: int | None = None, path: str = f"/v2/models/{MODEL}/infer",
            **headers: str) -> httpx.Response:
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    return httpx.post(f"{live.url}{path}", content=body, headers=headers, timeout=60)


def assert_v2_error(response: httpx.Response, status: int, *names: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    assert all(name in body["error"] for name in names), (names, body)
    return body["error"]


def test_health_server_metadata_and_model_readiness(client: triton.InferenceServerClient, live: LiveServer) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "mari-serve" and "binary_tensor_data" in metadata["extensions"]
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "v1")
    assert not client.is_model_ready(MODEL, "v2") and not client.is_model_ready("other")
    assert_v2_error(httpx.get(f"{live.url}/v2/models/{MODEL}/versions/v2/ready"), 404, "v2")
    assert_v2_error(httpx.get(f"{live.url}/v2/models/other/ready"), 404, "other")
    assert_v2_error(httpx.get(f"{live.url}/v2/models/{MODEL}/nothing"), 404)


def test_model_metadata_has_one_input_per_feature_and_one_output_per_task(
    client: triton.InferenceServerClient, live: LiveServer, schema: FeatureSchema
) -> None:
    metadata = client.get_model_metadata(MODEL)
    assert metadata == client.get_model_metadata(MODEL, "v1")
    assert (metadata["name"], metadata["versions"]) == (MODEL, ["v1"])
    inputs = {tensor["name"]: tensor for tensor in metadata["inputs"]}
    assert list(inputs) == list(schema.names)
    for spec in schema.features:
        batch = 1 if spec.is_user else -1
        expected = {Kind.SPARSE_ID: ("INT64", [batch]), Kind.DENSE: ("FP32", [batch, spec.dim]),
                    Kind.ID_SEQUENCE: ("INT64", [batch, spec.max_len])}[spec.kind]
        assert (inputs[spec.name]["datatype"], inputs[spec.name]["shape"]) == expected, spec.name
    tasks = httpx.get(f"{live.url}/v1/models").json()["tasks"]
    outputs = [*tasks, "final_scores"]
    assert metadata["outputs"] == [{"name": name, "datatype": "FP32", "shape": [-1]} for name in outputs]
    with pytest.raises(InferenceServerException) as unknown_version:
        client.get_model_metadata(MODEL, "v9")
    assert unknown_version.value.status() == "404"


@pytest.mark.parametrize("binary_in, binary_out", [(True, True), (False, False), (True, False), (False, True)])
def test_infer_scores_equal_rank_for_the_same_request(
    client: triton.InferenceServerClient, live: LiveServer, schema: FeatureSchema, binary_in: bool, binary_out: bool
) -> None:
    request = example_request(schema, n=40, columnar=True, seed=11)
    expected, rank_variant = rank(live, request)
    tasks = expected["tasks"]
    outputs = [triton.InferRequestedOutput(name, binary_data=binary_out) for name in [*tasks, "final_scores"]]
    result = client.infer(MODEL, infer_inputs(schema, feature_arrays(schema, request), binary=binary_in),
                          outputs=outputs, request_id="req-7", parameters={"user_id": request["user_id"]})
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == ("req-7", MODEL, "v1")
    assert response["parameters"]["variant"] == rank_variant  # the same user lands in the same arm by either door
    for output in response["outputs"]:
        assert ("binary_data_size" in output.get("parameters", {})) is binary_out
        assert ("data" in output) is not binary_out
    for task in tasks:
        np.testing.assert_allclose(result.as_numpy(task), expected["scores"][task], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(result.as_numpy("final_scores"), expected["final_scores"], rtol=0, atol=TOLERANCE)


def test_only_the_requested_outputs_come_back_each_in_its_own_form(
    client: triton.InferenceServerClient, schema: FeatureSchema
) -> None:
    request = example_request(schema, n=5, columnar=True, seed=2)
    outputs = [triton.InferRequestedOutput("final_scores", binary_data=False),
               triton.InferRequestedOutput("click", binary_data=True)]
    result = client.infer(MODEL, infer_inputs(schema, feature_arrays(schema, request)), outputs=outputs)
    response = result.get_response()
    assert [output["name"] for output in response["outputs"]] == ["final_scores", "click"]
    assert len(response["outputs"][0]["data"]) == 5 and response["outputs"][1]["parameters"]["binary_data_size"] == 20
    assert "id" not in response and result.as_numpy("click").shape == (5,)


def test_user_id_picks_the_ab_arm_and_a_request_without_one_gets_the_default_variant(
    client: triton.InferenceServerClient, live: LiveServer, schema: FeatureSchema
) -> None:
    request = example_request(schema, n=6, columnar=True, seed=3)
    inputs = infer_inputs(schema, feature_arrays(schema, request))
    for variant in (Variant.VANI, Variant.MARI):
        routed = client.infer(MODEL, inputs, parameters={"user_id": user_in_arm(variant)})
        assert routed.get_response()["parameters"]["variant"] == variant.value
    anonymous = [client.infer(MODEL, inputs).get_response()["parameters"]["variant"] for _ in range(3)]
    assert anonymous == ["mari"] * 3  # RANKER_VARIANT, outside the A/B split


def test_versioned_infer_serves_the_loaded_version_and_404s_any_other(
    client: triton.InferenceServerClient, schema: FeatureSchema
) -> None:
    inputs = infer_inputs(schema, feature_arrays(schema, example_request(schema, n=3, columnar=True, seed=4)))
    assert client.infer(MODEL, inputs, model_version="v1").as_numpy("final_scores").shape == (3,)
    for model, version in (("other", ""), (MODEL, "v2")):
        with pytest.raises(InferenceServerException) as refused:
            client.infer(model, inputs, model_version=version)
        assert refused.value.status() == "404"


def bad_requests(schema: FeatureSchema) -> dict[str, tuple[Any, ...]]:
    """Name -> (body, header length, the names the error must contain), each one mistake in a valid request."""
    request = example_request(schema, n=4, columnar=True, seed=5)
    good = feature_arrays(schema, request)
    user_dense = next(s.name for s in schema.user_features if s.kind is Kind.DENSE)
    item_dense = next(s.name for s in schema.candidate_features if s.kind is Kind.DENSE)
    user_id = next(s.name for s in schema.user_features if s.kind is Kind.SPARSE_ID)
    item_id = next(s.name for s in schema.candidate_features if s.kind is Kind.SPARSE_ID)

    def changed(binary: bool = True, **arrays: np.ndarray) -> tuple[bytes, int | None]:
        return request_body(infer_inputs(schema, {**good, **arrays}, binary=binary))

    missing = request_body([i for i in infer_inputs(schema, good) if i.name() != item_dense])
    wrong_type = infer_inputs(schema, good)
    index = list(schema.names).index(item_id)
    wrong_type[index] = triton.InferInput(item_id, [4], "FP32").set_data_from_numpy(good[item_id].astype(np.float32))
    binary, length = changed()
    nan_dense = good[item_dense].copy()
    nan_dense[2, 0] = np.nan
    inf_dense = good[user_dense].copy()
    inf_dense[0, 0] = np.inf
    return {
        "missing feature": (*missing, [item_dense]),
        "wrong datatype": (*request_body(wrong_type), [item_id, "INT64"]),
        "wrong shape": (*changed(**{item_dense: good[item_dense][:, :-1]}), [item_dense]),
        "user batch of 2": (*changed(**{user_dense: np.repeat(good[user_dense], 2, axis=0)}), [user_dense, "batch 1"]),
        "mismatched N": (*changed(**{item_id: good[item_id][:3]}), [item_id]),
        "negative id": (*changed(**{item_id: np.array([1, -2, 3, 4])}), [item_id, "-2"]),
        "id past max_id": (*changed(binary=False, **{user_id: np.array([2**60])}), [user_id]),
        "NaN dense (binary)": (*changed(**{item_dense: nan_dense}), [item_dense]),
        "inf dense (JSON)": (*changed(binary=False, **{user_dense: inf_dense}), [user_dense]),
        "truncated binary payload": (binary[:-4], length, [schema.features[-1].name]),
        "bytes past the binary data": (binary + b"\0" * 8, length, ["binary_data_size"]),
        "header length not a number": (binary, "12x", ["Inference-Header-Content-Length"]),
        "header length past the body": (binary, len(binary) + 1, ["Inference-Header-Content-Length"]),
        "header length mid-JSON": (binary, 10, ["JSON"]),
    }


def test_each_bad_input_is_a_400_naming_it(live: LiveServer, schema: FeatureSchema) -> None:
    for case, (body, length, names) in bad_requests(schema).items():
        response = post_v2(live, body, length)
        assert response.status_code == 400, (case, response.text)
        assert_v2_error(response, 400, *names)


def test_tritonclient_raises_the_servers_400_and_404(
    client: triton.InferenceServerClient, schema: FeatureSchema
) -> None:
    arrays = feature_arrays(schema, example_request(schema, n=4, columnar=True, seed=6))
    item_dense = next(s.name for s in schema.candidate_features if s.kind is Kind.DENSE)
    arrays[item_dense][1, 1] = np.inf
    with pytest.raises(InferenceServerException) as bad:
        client.infer(MODEL, infer_inputs(schema, arrays))
    assert bad.value.status() == "400" and item_dense in bad.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no-such-model", infer_inputs(schema, arrays))
    assert unknown.value.status() == "404" and "no-such-model" in unknown.value.message()


def test_body_limit_content_type_and_encoding_are_refused_in_v2_shape(live: LiveServer, schema: FeatureSchema) -> None:
    arrays = feature_arrays(schema, example_request(schema, n=2, columnar=True))
    small = request_body(infer_inputs(schema, arrays))
    json_body, _ = request_body(infer_inputs(schema, arrays, binary=False))
    assert_v2_error(post_v2(live, json_body + b" " * MAX_BODY_BYTES), 413)  # valid JSON, one body too large
    assert_v2_error(post_v2(live, *small, **{"content-type": "text/plain"}), 415)
    assert_v2_error(post_v2(live, *small, **{"content-encoding": "gzip"}), 415, "gzip")
    assert post_v2(live, *small, **{"content-type": "application/octet-stream"}).status_code == 200


def test_v2_requests_are_counted_apart_and_shadowed_like_rank(live: LiveServer, schema: FeatureSchema) -> None:
    before = parse_metrics(httpx.get(f"{live.url}/metrics").text)
    body = request_body(infer_inputs(schema, feature_arrays(schema, example_request(schema, n=3, columnar=True))))
    assert post_v2(live, *body).status_code == 200
    assert post_v2(live, b"{", None).status_code == 400
    after = parse_metrics(httpx.get(f"{live.url}/metrics").text)

    def moved(metric: str, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert moved("ranker_v2_requests_total", model=MODEL, variant="mari", status="200") == 1
    assert moved("ranker_v2_requests_total", model=MODEL, variant="none", status="400") == 1
    assert moved("ranker_stage_duration_seconds_count", model=MODEL, stage="infer", variant="mari") == 1
    assert sum(v for (name, _), v in after.items() if name == "ranker_requests_total") == sum(
        v for (name, _), v in before.items() if name == "ranker_requests_total")  # /rank's counter untouched
    assert total(after, "ranker_shadow_mismatches_total", primary="mari", shadow="uoi") == 0


def test_not_ready_is_a_503_with_retry_after_in_v2_shape(store: Path, schema: FeatureSchema) -> None:
    not_started = TestClient(create_app(make_settings(store, model_version="v1", retry_after_s=4)))  # nothing loaded
    body, json_size = request_body(infer_inputs(schema, feature_arrays(schema, example_request(schema, n=2))))
    for response in (not_started.get("/v2/health/ready"), not_started.get(f"/v2/models/{MODEL}"),
                     not_started.post(f"/v2/models/{MODEL}/infer", content=body,
                                      headers={"Inference-Header-Content-Length": str(json_size)})):
        assert_v2_error(response, 503, "no model")
        assert response.headers["retry-after"] == "4"
    assert not_started.get("/v2/health/live").status_code == 200


def test_service_errors_map_to_v2_statuses_in_one_place() -> None:
    overloaded = error_response(Overloaded("every slot is busy", retry_after_s=2), v2=True)
    assert (overloaded.status_code, overloaded.headers["retry-after"]) == (503, "2")
    assert json.loads(overloaded.body) == {"error": "every slot is busy"}
    assert error_response(InvalidRequest("input 'x': bad", field="x"), v2=True).status_code == 400
    assert error_response(InvalidRequest("bad", field="x")).status_code == 422  # /rank keeps its 422
    assert error_response(ModelNotFound("unknown model 'y'"), v2=True).status_code == 404
