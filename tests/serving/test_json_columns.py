"""The fast columnar reader (service/serving/json_columns.py) against the validator and the encoder.

The promise: the fast path never accepts a body the validator refuses, and whatever it accepts becomes exactly
the tensors the validator + encoder make; valid columnar bodies do take it. Bodies are valid ones from
`example_request` (N = 1 included) broken at a random place with a random value, a key more or less, a
duplicate key or a different length, for a schema with every feature kind on both sides.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.features.schema import FeatureSchema, FeatureSpec, Kind, Side
from service.serving.codec import RequestCodec
from service.serving.errors import InvalidRequest, MalformedRequest
from service.serving.example_request import example_request

MAX_ID = 1000
SCHEMA = FeatureSchema((
    FeatureSpec("u_id", Side.USER, Kind.SPARSE_ID, vocab_size=50),
    FeatureSpec("u_dense", Side.USER, Kind.DENSE, dim=3),
    FeatureSpec("u_seq", Side.USER, Kind.ID_SEQUENCE, vocab_size=30, max_len=4),
    FeatureSpec("i_id", Side.ITEM, Kind.SPARSE_ID, vocab_size=20),
    FeatureSpec("i_dense", Side.ITEM, Kind.DENSE, dim=2),
    FeatureSpec("i_seq", Side.ITEM, Kind.ID_SEQUENCE, vocab_size=25, max_len=3),
    FeatureSpec("x_dense", Side.CROSS, Kind.DENSE, dim=1),
))
ODD_VALUES = [True, False, None, "1", 1.5, 1.0, -1, 0, MAX_ID, MAX_ID + 1, 2**63, 2**70, 1e39, -1e39, 3.4e38, [],
              [1], [[1]], [1, [2]], {}, {"a": 1}, "a[b", "", "x" * 300, 2]


def _codec(overflow: str) -> RequestCodec:
    return RequestCodec(SCHEMA, max_candidates=6, max_id=MAX_ID, sequence_overflow=overflow)  # type: ignore[arg-type]


CODECS = {overflow: _codec(overflow) for overflow in ("reject", "truncate")}


def _slow(codec: RequestCodec, body: bytes) -> tuple[str, Any]:
    """The validator + encoder: ("ok", (fields, features)) or ("error", (type, field, code))."""
    try:
        request = codec.decode(body)
        encoded = codec.encode(request)
    except (InvalidRequest, MalformedRequest) as exc:
        return "error", (type(exc).__name__, getattr(exc, "field", None), getattr(exc, "code", None))
    return "ok", ((request.user_id, request.request_id, request.top_k, encoded.n_candidates), encoded.features)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value (the root excluded)."""
    found = [path] if path else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*path, index))
    return found


def _set(value: Any, path: tuple[Any, ...], new: Any) -> None:
    for part in path[:-1]:
        value = value[part]
    value[path[-1]] = new


def _delete(value: Any, path: tuple[Any, ...]) -> None:
    for part in path[:-1]:
        value = value[part]
    del value[path[-1]]


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, bool, bool]:
    """A body; whether it is an untouched example, columnar or row-wise (which the fast path must take); whether a
    sequence is longer than its max_len (valid when sequences are truncated)."""
    n = draw(st.integers(1, 6))
    request = example_request(SCHEMA, n=n, columnar=True, seed=draw(st.integers(0, 10**6)))
    request["top_k"] = draw(st.sampled_from([None, 1, n, 50]))
    if draw(st.booleans()):
        request["request_id"] = draw(st.sampled_from(["req-1", "a b", "abc\n", "x" * 129]))
    long = draw(st.booleans())
    if long:
        seq = draw(st.sampled_from(["u_seq", "i_seq"]))
        ids = list(range(1, {"u_seq": 4, "i_seq": 3}[seq] + 1 + draw(st.integers(1, 3))))
        if seq == "u_seq":
            request["user"]["u_seq"] = ids
        else:
            request["candidates"]["i_seq"][0] = ids
    if draw(st.booleans()):  # row-wise: one object per candidate
        columns = request["candidates"]
        request["candidates"] = [{k: v[i] for k, v in columns.items()} for i in range(n)]
    rowwise = isinstance(request["candidates"], list)
    kinds = ["none"] * 2 + ["replace"] * 6 + ["delete", "add", "duplicate", "text", "ragged"]
    mutation = draw(st.sampled_from(kinds))
    text: str | None = None
    if mutation == "replace":
        leaves = [path for path in _paths(request) if path[0] in ("user", "candidates")]
        _set(request, draw(st.sampled_from(leaves)), draw(st.sampled_from(ODD_VALUES)))
    elif mutation == "delete":
        path = draw(st.sampled_from(_paths(request)))
        _delete(request, path)
    elif mutation == "add":
        where = draw(st.sampled_from([(), ("user",), ("candidates", 0) if rowwise else ("candidates",)]))
        target = request
        for part in where:
            target = target[part]
        target[draw(st.sampled_from(["extra", "u_id", "i_id"]))] = draw(st.sampled_from(ODD_VALUES))
    elif mutation == "ragged" and n > 1:  # as many numbers in all, not `dim` in each row
        name = draw(st.sampled_from(["i_dense", "i_seq"]))
        first, second = ((request["candidates"][0][name], request["candidates"][1][name]) if rowwise
                         else request["candidates"][name][:2])
        if first:
            second.append(first.pop())
    elif mutation == "duplicate":
        text = json.dumps(request)
        field = draw(st.sampled_from(['"user_id": "dup", ', '"u_id": 3, ', '"i_id": [1], ']))
        anchors = {'"user_id": "dup", ': "{", '"u_id": 3, ': '"user": {',
                   '"i_id": [1], ': '"candidates": [{' if rowwise else '"candidates": {'}
        text = text.replace(anchors[field], anchors[field] + field, 1)
    elif mutation == "text":
        text = json.dumps(request).replace(draw(st.sampled_from(["0.", "1", "]"])),
                                           draw(st.sampled_from(["NaN", "1e400", "-", "]]", " 7"])), 1)
    body = (text if text is not None else json.dumps(request)).encode()
    return body, mutation == "none" and "request_id" not in request, long


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=bodies(), overflow=st.sampled_from(["reject", "truncate"]))
def test_the_fast_path_takes_only_what_the_validator_takes_and_encodes_it_the_same(
        case: tuple[bytes, bool, bool], overflow: str) -> None:
    body, plain, long = case
    codec = CODECS[overflow]
    outcome, slow = _slow(codec, body)
    fast = codec._columns.read(body)
    if fast is not None:
        assert outcome == "ok", f"fast path accepted a body the validator refuses with {slow}: {body[:300]!r}"
    if plain and (not long or overflow == "truncate"):
        assert fast is not None, f"fast path refused a valid columnar body: {body[:300]!r}"
    if outcome == "error":
        with pytest.raises((InvalidRequest, MalformedRequest)) as raised:
            codec.read(body)
        assert (type(raised.value).__name__, raised.value.field, raised.value.code) == slow
        return
    read = codec.read(body)
    fields, features = slow
    assert (read.user_id, read.request_id, read.top_k, read.encoded.n_candidates) == fields
    assert list(read.encoded.features) == list(features)  # the same order: a model's pytree may depend on it
    for name, tensor in features.items():
        got = read.encoded.features[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape and torch.equal(got, tensor), name


@pytest.mark.parametrize("n", [1, 100, 1000])
def test_valid_columnar_and_row_wise_bodies_take_the_fast_path_with_the_encoders_tensors(n: int) -> None:
    codec = RequestCodec(SCHEMA, max_candidates=1000, max_id=MAX_ID, sequence_overflow="reject")
    body = json.dumps(example_request(SCHEMA, n=n, columnar=True, seed=n)).encode()
    fast = codec._columns.read(body)
    assert fast is not None and fast.n_candidates == n
    expected = codec.encode(codec.decode(body)).features
    read = codec.read(body).encoded.features
    assert all(torch.equal(read[name], expected[name]) for name in expected)
    rows = json.dumps(example_request(SCHEMA, n=n, columnar=False, seed=n)).encode()
    assert codec._columns.read(rows) is not None
    assert all(torch.equal(codec.read(rows).encoded.features[name], expected[name]) for name in expected)
