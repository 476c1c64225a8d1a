"""The Open Inference Protocol codec in process: V2 tensors encode exactly as the /rank codec encodes the same
request (JSON or binary data, OOV ids, padded sequences), every malformed input is one error naming it, and
responses parse with tritonclient."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as triton

from service.engine import Variant
from service.features.schema import FeatureSchema, FeatureSpec
from service.serving.codec import RequestCodec
from service.serving.errors import InvalidRequest, MalformedRequest, ModelNotFound
from service.serving.example_request import example_request
from service.serving.serving_model import Scored, final_scores
from service.serving.v2_codec import (
    RequestedOutput,
    V2Door,
    V2Reply,
    encode_response,
    parse_header,
    requested_outputs,
    split_body,
)
from service.serving.v2_tensors import encode_inputs, read_inputs
from tests.api.v2_requests import feature_arrays, infer_inputs, request_body

SCHEMA = FeatureSchema((FeatureSpec("user_id", "user", "sparse_id", vocab_size=50),
                        FeatureSpec("user_dense", "user", "dense", dim=3),
                        FeatureSpec("user_seq", "user", "id_sequence", vocab_size=40, max_len=5),
                        FeatureSpec("item_id", "item", "sparse_id", vocab_size=80),
                        FeatureSpec("item_dense", "item", "dense", dim=2),
                        FeatureSpec("item_tags", "item", "id_sequence", vocab_size=30, max_len=4)))
TASKS = ("click", "like")
MAX_CANDIDATES = 10


def codec(**options: Any) -> RequestCodec:
    settings = {"max_candidates": MAX_CANDIDATES, "max_id": 2**53, "sequence_overflow": "reject", **options}
    return RequestCodec(SCHEMA, **settings)


def serving(**options: Any) -> Any:
    """What the V2 codec reads of a ServingModel, without building a model."""
    weights = torch.tensor([1.0, 0.5])
    return SimpleNamespace(name="m", version="v3", tasks=TASKS, codec=codec(**options),
                           final_scores=lambda scores: final_scores(scores, TASKS, weights))


def rank_request(n: int = 6, seed: int = 0) -> dict[str, Any]:
    """A columnar /rank body with ids past the vocabulary (OOV) in a sparse feature and a sequence."""
    request = example_request(SCHEMA, n=n, columnar=True, seed=seed)
    request["candidates"]["item_id"][0] = 80 + 7
    request["user"]["user_seq"] = [3, 41, 900]
    return request


def decode_v2(body: bytes, json_size: int | None, **options: Any) -> dict[str, torch.Tensor]:
    header, binary = split_body(body, None if json_size is None else str(json_size))
    model_codec = codec(**options)
    arrays, _ = read_inputs(parse_header(header)["inputs"], binary, model_codec)
    return encode_inputs(arrays, model_codec)


def v2_body(arrays: dict[str, np.ndarray], binary: bool = True, **parameters: Any) -> tuple[bytes, int | None]:
    return request_body(infer_inputs(SCHEMA, arrays, binary=binary), **parameters)


def raw_body(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def refusal(body: bytes, json_size: int | None = None, **options: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as refused:
        decode_v2(body, json_size, **options)
    return refused.value


def json_inputs(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    return [{"name": name, "shape": list(a.shape), "datatype": "FP32" if a.dtype == np.float32 else "INT64",
             "data": a.reshape(-1).tolist()} for name, a in arrays.items()]


@pytest.mark.parametrize("binary", [True, False])
def test_v2_inputs_encode_exactly_as_the_rank_codec_encodes_the_same_request(binary: bool) -> None:
    request = rank_request()
    expected = codec().encode(codec().decode(json.dumps(request).encode())).features
    decoded = decode_v2(*v2_body(feature_arrays(SCHEMA, request), binary=binary))
    assert decoded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert decoded[name].dtype == tensor.dtype and torch.equal(decoded[name], tensor), name
    assert int(decoded["item_id"][0]) == 80 and decoded["user_seq"].tolist() == [[3, 40, 40, 0, 0]]  # OOV rows


def test_sparse_ids_as_columns_and_nested_json_data_are_accepted() -> None:
    arrays = feature_arrays(SCHEMA, rank_request())
    reference = decode_v2(*v2_body(arrays))
    inputs = json_inputs({**arrays, "item_id": arrays["item_id"].reshape(-1, 1)})
    inputs[4]["data"] = arrays["item_dense"].tolist()  # [[a, b], ...]: nested, row-major
    decoded = decode_v2(raw_body(inputs), None)
    assert all(torch.equal(decoded[name], reference[name]) for name in reference)


def test_shorter_sequences_are_padded_and_longer_ones_refused_or_cut_by_the_codecs_rule() -> None:
    arrays = feature_arrays(SCHEMA, rank_request())
    short = decode_v2(*v2_body({**arrays, "item_tags": arrays["item_tags"][:, :2]}))
    assert torch.equal(short["item_tags"][:, :2], torch.from_numpy(arrays["item_tags"][:, :2]).clamp(max=30))
    assert not short["item_tags"][:, 2:].any()
    longer = {**arrays, "item_tags": np.concatenate([arrays["item_tags"], np.full((6, 2), 9)], axis=1)}
    refused = refusal(*v2_body(longer))
    assert (refused.code, refused.field) == ("sequence_too_long", "item_tags")
    cut = decode_v2(*v2_body(longer), sequence_overflow="truncate")
    assert torch.equal(cut["item_tags"], torch.from_numpy(arrays["item_tags"]).clamp(max=30))


@pytest.mark.parametrize("data, code", [([1.0, 2.5, 3.0, 4.0, 5.0, 6.0], "invalid_type"),
                                        ([True] * 6, "invalid_type"), (["1"] * 6, "invalid_type"),
                                        ([1, None, 3, 4, 5, 6], "invalid_type"), ([[1, 2], [3]], "invalid_type"),
                                        ([1, 2, 3], "wrong_shape"), ([1, 2, 3, 4, 5, 2**63], "invalid_type"),
                                        ([2**63] * 6, "id_out_of_range"), ([2**53 + 1] * 6, "id_out_of_range"),
                                        ([1, 2, 3, 4, 5, -1], "id_out_of_range")])
def test_json_ids_must_be_integers_in_range_one_per_element(data: list[Any], code: str) -> None:
    inputs = json_inputs(feature_arrays(SCHEMA, rank_request()))
    inputs[3]["data"] = data  # item_id, shape [6]
    refused = refusal(raw_body(inputs))
    assert (refused.code, refused.field) == (code, "item_id")


@pytest.mark.parametrize("value", [1e39, float("nan"), float("-inf")])
def test_dense_values_not_finite_in_float32_are_refused_naming_the_row(value: float) -> None:
    arrays = feature_arrays(SCHEMA, rank_request())
    inputs = json_inputs(arrays)
    inputs[4]["data"][5] = value  # item_dense row 2
    refused = refusal(json.dumps({"inputs": inputs}).encode())  # NaN/Infinity literals, as tritonclient writes
    assert (refused.code, refused.field) == ("non_finite", "item_dense[2]")


def test_binary_data_sizes_must_be_exact() -> None:
    arrays = feature_arrays(SCHEMA, rank_request())
    body, json_size = v2_body(arrays)
    assert refusal(body[:-1], json_size).code == "truncated_binary_data"
    assert refusal(body + b"\0", json_size).code == "invalid_binary_data"
    header = json.loads(body[:json_size])
    header["inputs"][0]["parameters"]["binary_data_size"] = 4  # user_id INT64 [1] needs 8 bytes
    header["inputs"][1]["parameters"]["binary_data_size"] += 4
    moved = json.dumps(header).encode()
    refused = refusal(moved + body[json_size:], len(moved))
    assert (refused.code, refused.field) == ("invalid_binary_data", "user_id")


@pytest.mark.parametrize("length", ["abc", "0", "-3", "1e3", "١٢", "999999"])
def test_the_header_length_must_be_a_whole_number_within_the_body(length: str) -> None:
    body, _ = v2_body(feature_arrays(SCHEMA, rank_request()))
    with pytest.raises(InvalidRequest) as refused:
        split_body(body, length)
    assert refused.value.field == "Inference-Header-Content-Length"


def test_a_header_that_is_not_json_is_malformed_and_a_bad_structure_names_the_field() -> None:
    with pytest.raises(MalformedRequest):
        parse_header(b'{"inputs": [')
    with pytest.raises(InvalidRequest) as refused:
        parse_header(b'{"inputs": [{"name": "user_id", "shape": [1.5], "datatype": "INT64", "data": [1]}]}')
    assert refused.value.field == "inputs[0].shape[0]"


@pytest.mark.parametrize("change, code, field", [
    (lambda inputs: inputs[:-1], "missing_feature", "item_tags"),
    (lambda inputs: [*inputs, {**inputs[0], "name": "extra"}], "unknown_feature", "extra"),
    (lambda inputs: [*inputs, inputs[0]], "duplicate_input", "user_id"),
    (lambda inputs: [{**inputs[0], "datatype": "INT32"}, *inputs[1:]], "invalid_type", "user_id"),
    (lambda inputs: [{**inputs[0], "shape": [2], "data": [1, 2]}, *inputs[1:]], "wrong_shape", "user_id"),
    (lambda inputs: [*inputs[:3], {**inputs[3], "shape": [5], "data": [1] * 5}, *inputs[4:]], "length_mismatch",
     "item_id"),
    (lambda inputs: [*inputs[:4], {**inputs[4], "shape": [6, 3], "data": [0.0] * 18}, inputs[5]], "wrong_shape",
     "item_dense"),
    (lambda inputs: [{k: v for k, v in inputs[0].items() if k != "data"}, *inputs[1:]], "missing_data", "user_id"),
    (lambda inputs: [{**inputs[0], "parameters": {"shared_memory_region": "r"}}, *inputs[1:]],
     "unsupported_parameter", "shared_memory_region"),
])
def test_each_malformed_input_is_one_error_naming_it(change: Any, code: str, field: str) -> None:
    refused = refusal(raw_body(change(json_inputs(feature_arrays(SCHEMA, rank_request())))))
    assert (refused.code, refused.field) == (code, field)


@pytest.mark.parametrize("n, code", [(0, "empty_candidates"), (MAX_CANDIDATES + 1, "too_many_candidates")])
def test_the_number_of_candidates_is_1_to_max_candidates(n: int, code: str) -> None:
    arrays = feature_arrays(SCHEMA, rank_request(n=max(n, 1)))
    if n == 0:
        arrays = {name: a if SCHEMA.get(name).is_user else a[:0] for name, a in arrays.items()}
    refused = refusal(raw_body(json_inputs(arrays)))
    assert refused.code == code


def test_the_door_reads_user_id_and_id_and_refuses_other_models() -> None:
    body, json_size = v2_body(feature_arrays(SCHEMA, rank_request()), user_id="u-1")
    decoded = V2Door("m", "v3", str(json_size)).decode(serving(), body)
    assert (decoded.user_id, decoded.n_candidates, decoded.request_id) == ("u-1", 6, None)
    anonymous = V2Door("m", None, None).decode(serving(), raw_body(json_inputs(feature_arrays(SCHEMA, rank_request())),
                                                                   id="any id / with spaces"))
    assert anonymous.user_id is None and anonymous.reply.id == "any id / with spaces" and anonymous.request_id is None
    numeric_user, numeric_size = v2_body(feature_arrays(SCHEMA, rank_request()), user_id=17)
    with pytest.raises(InvalidRequest) as bad_user:
        V2Door("m", None, str(numeric_size)).decode(serving(), numeric_user)
    assert bad_user.value.field == "parameters.user_id"
    for name, version in (("other", None), ("m", "v1")):
        with pytest.raises(ModelNotFound):
            V2Door(name, version, None).decode(serving(), body)


def test_outputs_are_all_by_default_and_each_binary_as_asked() -> None:
    model = serving()
    assert requested_outputs(parse_header(raw_body([])), model) == tuple(
        RequestedOutput(name, False) for name in (*TASKS, "final_scores"))
    asked = parse_header(raw_body([], parameters={"binary_data_output": True}, outputs=[
        {"name": "like"}, {"name": "final_scores", "parameters": {"binary_data": False}}]))
    assert requested_outputs(asked, model) == (RequestedOutput("like", True), RequestedOutput("final_scores", False))
    for outputs, code in (([{"name": "nope"}], "unknown_output"), ([{"name": "like"}] * 2, "duplicate_output"),
                          ([{"name": "like", "parameters": {"classification": 3}}], "unsupported_parameter")):
        with pytest.raises(InvalidRequest) as refused:
            requested_outputs(parse_header(raw_body([], outputs=outputs)), model)
        assert refused.value.code == code


def test_a_response_with_binary_and_json_outputs_parses_with_tritonclient() -> None:
    model = serving()
    scores = {"click": torch.tensor([0.1, 0.7, 0.3]), "like": torch.tensor([0.5, 0.2, 0.9])}
    reply = V2Reply("r-9", (RequestedOutput("click", True), RequestedOutput("final_scores", False),
                            RequestedOutput("like", True)))
    final = torch.tensor([0.3, 0.45, 0.6])  # what the inference slot computed (the response does not recompute it)
    response = encode_response(model, Variant.UOI, Scored(scores, final), reply)
    assert response.json_length is not None and len(response.content) == response.json_length + 2 * 3 * 4
    result = triton.InferResult.from_response_body(response.content, header_length=response.json_length)
    assert result.get_response()["id"] == "r-9" and result.get_response()["parameters"] == {"variant": "uoi"}
    np.testing.assert_array_equal(result.as_numpy("click"), scores["click"].numpy())
    np.testing.assert_array_equal(result.as_numpy("like"), scores["like"].numpy())
    np.testing.assert_array_equal(result.as_numpy("final_scores"), final.numpy())
    plain = encode_response(model, Variant.MARI, Scored(scores, final),
                            V2Reply(None, (RequestedOutput("like", False),)))
    assert plain.json_length is None and "id" not in json.loads(plain.content)
