"""RequestCodec: JSON body -> validated values -> model input tensors, and one precise error per bad input."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import torch

from service.features.schema import FeatureSchema, FeatureSpec, Kind, Side
from service.serving.codec import RequestCodec
from service.serving.errors import InvalidRequest, MalformedRequest
from service.serving.example_request import example_request


def make_codec(schema: FeatureSchema, **overrides: Any) -> RequestCodec:
    options = {"max_candidates": 50, "max_id": 2**53, "sequence_overflow": "reject", **overrides}
    return RequestCodec(schema, **options)


def encode(codec: RequestCodec, body: dict) -> dict[str, torch.Tensor]:
    return codec.encode(codec.decode(json.dumps(body).encode())).features


def test_columnar_and_rowwise_bodies_encode_to_the_schemas_example_batch(schema: FeatureSchema) -> None:
    codec = make_codec(schema)
    columnar = example_request(schema, n=12, columnar=True, seed=3)
    rows = example_request(schema, n=12, columnar=False, seed=3)
    from_columns, from_rows = encode(codec, columnar), encode(codec, rows)
    expected = schema.example_batch(12, torch.Generator().manual_seed(3))
    for spec in schema.features:
        assert from_columns[spec.name].dtype == expected[spec.name].dtype
        assert torch.equal(from_columns[spec.name], from_rows[spec.name]), spec.name
        if spec.kind is Kind.DENSE:  # the example rounds dense values to 4 decimals
            assert torch.allclose(from_columns[spec.name], expected[spec.name], atol=1e-4)
        else:
            assert torch.equal(from_columns[spec.name], expected[spec.name]), spec.name
    assert from_columns["user_id"].shape == (1,) and from_columns["item_id"].shape == (12,)


def test_ids_past_the_vocabulary_map_to_the_oov_row_and_sequences_are_right_padded(schema: FeatureSchema) -> None:
    codec = make_codec(schema)
    body = example_request(schema, n=2, columnar=True)
    item, sequence = schema.get("item_id"), schema.get("user_seq")
    body["candidates"]["item_id"] = [item.vocab_size - 1, 2**53]
    body["user"]["user_seq"] = [5, sequence.vocab_size + 7]
    features = encode(codec, body)
    assert features["item_id"].tolist() == [item.vocab_size - 1, item.vocab_size]
    assert features["user_seq"].tolist() == [[5, sequence.vocab_size] + [0] * (sequence.max_len - 2)]


def test_long_sequences_are_truncated_to_max_len_when_configured(schema: FeatureSchema) -> None:
    max_len = schema.get("user_seq").max_len
    body = example_request(schema, n=2, columnar=True)
    body["user"]["user_seq"] = list(range(1, max_len + 4))
    with pytest.raises(InvalidRequest) as rejected:
        encode(make_codec(schema), body)
    assert rejected.value.code == "sequence_too_long" and rejected.value.field == "user.user_seq"
    features = encode(make_codec(schema, sequence_overflow="truncate"), body)
    assert features["user_seq"].tolist() == [list(range(1, max_len + 1))]


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def change(body: dict) -> None:
        *parents, last = path.split("/")
        target = body
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[int(last) if isinstance(target, list) else last] = value
    return change


def _delete(path: str) -> Callable[[dict], None]:
    def change(body: dict) -> None:
        *parents, last = path.split("/")
        target = body
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        del target[last]
    return change


# (name, change to a valid columnar body of 5 candidates, expected code, expected field)
BAD_COLUMNAR = [
    ("string id", _set("candidates/item_id/2", "7"), "invalid_type", "candidates.item_id[2]"),
    ("float id", _set("candidates/item_id/2", 7.5), "invalid_type", "candidates.item_id[2]"),
    ("bool in dense", _set("candidates/item_dense/1/0", True), "invalid_type", "candidates.item_dense[1][0]"),
    ("object instead of list", _set("user/user_dense", {"a": 1}), "invalid_type", "user.user_dense"),
    ("negative id", _set("candidates/item_id/0", -1), "id_out_of_range", "candidates.item_id[0]"),
    ("oversized id", _set("user/user_id", 2**53 + 1), "id_out_of_range", "user.user_id"),
    ("negative id in sequence", _set("user/user_seq/0", -3), "id_out_of_range", "user.user_seq[0]"),
    ("short vector", _set("candidates/cross_dense/4", [0.5]), "wrong_width", "candidates.cross_dense[4]"),
    ("long user vector", _set("user/user_dense", [0.1] * 50), "wrong_width", "user.user_dense"),
    ("missing candidate feature", _delete("candidates/item_author"), "missing_feature", "candidates.item_author"),
    ("missing user feature", _delete("user/user_gender"), "missing_feature", "user.user_gender"),
    ("unknown feature", _set("candidates/colour", [1, 2, 3, 4, 5]), "unknown_feature", "candidates.colour"),
    ("user feature among candidates", _set("candidates/user_dense", [[0.0]] * 5), "unknown_feature",
     "candidates.user_dense"),
    ("column of another length", _set("candidates/item_id", [1, 2, 3]), "length_mismatch", "candidates.item_id"),
    ("empty columns", lambda b: b.__setitem__("candidates", {k: [] for k in b["candidates"]}), "empty_candidates",
     None),
    ("empty row list", _set("candidates", []), "empty_candidates", "candidates"),
    ("candidates not a container", _set("candidates", 5), "invalid_type", "candidates"),
    ("missing user_id", _delete("user_id"), "missing_field", "user_id"),
    ("unknown top-level field", _set("colour", "red"), "unknown_field", "colour"),
    ("zero top_k", _set("top_k", 0), "invalid_value", "top_k"),
    ("float32 overflow", _set("candidates/item_dense/3/1", 1e39), "non_finite", "candidates.item_dense[3][1]"),
]


@pytest.mark.parametrize("change, code, field", [case[1:] for case in BAD_COLUMNAR],
                         ids=[case[0] for case in BAD_COLUMNAR])
def test_each_bad_input_is_one_invalid_request_naming_the_field(
    schema: FeatureSchema, change: Callable[[dict], None], code: str, field: str | None
) -> None:
    body = copy.deepcopy(example_request(schema, n=5, columnar=True, seed=1))
    change(body)
    with pytest.raises(InvalidRequest) as error:
        encode(make_codec(schema), body)
    assert error.value.code == code
    if field is not None:
        assert error.value.field == field
    else:
        assert error.value.field.startswith("candidates.")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused_with_the_field(schema: FeatureSchema, token: str) -> None:
    body = example_request(schema, n=3, columnar=True)
    body["candidates"]["item_dense"][2][1] = 12345.5
    raw = json.dumps(body).replace("12345.5", token).encode()
    with pytest.raises(InvalidRequest) as error:
        make_codec(schema).decode(raw)
    assert (error.value.code, error.value.field) == ("non_finite", "candidates.item_dense[2][1]")


def test_row_wise_errors_name_the_candidate_index(schema: FeatureSchema) -> None:
    body = example_request(schema, n=4, columnar=False)
    body["candidates"][2]["item_dense"] = [1.0]
    with pytest.raises(InvalidRequest) as error:
        encode(make_codec(schema), body)
    assert (error.value.code, error.value.field) == ("wrong_width", "candidates[2].item_dense")


def test_too_many_candidates_in_either_form_is_refused(schema: FeatureSchema) -> None:
    codec = make_codec(schema, max_candidates=10)
    for columnar in (True, False):
        with pytest.raises(InvalidRequest) as error:
            encode(codec, example_request(schema, n=11, columnar=columnar))
        assert error.value.code == "too_many_candidates"


@pytest.mark.parametrize("raw", [b"{", b"", b"\xff\xfe", b'{"user_id": "u", }'])
def test_malformed_json_is_a_malformed_request(schema: FeatureSchema, raw: bytes) -> None:
    with pytest.raises(MalformedRequest):
        make_codec(schema).decode(raw)


def test_a_json_array_body_is_malformed(schema: FeatureSchema) -> None:
    with pytest.raises((MalformedRequest, InvalidRequest)) as error:
        make_codec(schema).decode(b"[1, 2]")
    assert error.value.code in ("malformed_json", "invalid_type")


def test_feature_names_that_shadow_python_attributes_are_accepted() -> None:
    schema = FeatureSchema((
        FeatureSpec("model_config", Side.USER, Kind.SPARSE_ID, vocab_size=4),
        FeatureSpec("copy", Side.ITEM, Kind.DENSE, dim=2),
    ))
    body = {"user_id": "u", "user": {"model_config": 9}, "candidates": {"copy": [[1, 2], [3, 4.5]]}}
    features = encode(make_codec(schema), body)
    assert features["model_config"].tolist() == [4]
    assert features["copy"].tolist() == [[1.0, 2.0], [3.0, 4.5]]
