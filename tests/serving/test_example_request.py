"""example_request: a valid, deterministic /rank body for a schema or a stored model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.features.schema import FeatureSchema
from service.serving.codec import RequestCodec
from service.serving.errors import InvalidRequest
from service.serving.example_request import example_request, example_request_for_store


def test_example_request_is_valid_and_deterministic(schema: FeatureSchema, store: Path) -> None:
    assert example_request(schema, n=7, columnar=True, seed=9) == example_request(schema, n=7, columnar=True, seed=9)
    assert example_request_for_store(store / "default", n=3, seed=2) == example_request(schema, n=3, seed=2)
    assert example_request(schema, n=7, seed=9) != example_request(schema, n=7, seed=10)
    codec = RequestCodec(schema, max_candidates=5000, max_id=2**53, sequence_overflow="reject")
    for columnar in (True, False):
        decoded = codec.decode(json.dumps(example_request(schema, n=7, columnar=columnar)).encode())
        assert decoded.n_candidates == 7
    with pytest.raises(InvalidRequest):
        codec.decode(json.dumps({**example_request(schema, n=2), "user": {}}).encode())
