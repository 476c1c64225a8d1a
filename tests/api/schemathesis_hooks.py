"""Schemathesis hooks for tests/api/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

Two rules of POST /rank (and /rank/{model}) that JSON Schema cannot state, applied to positive (schema-valid)
cases only, so that "valid data must be accepted" checks the rest of the contract:
- in the columnar form every candidate column has the same length N (otherwise 422 length_mismatch): the columns
  are cut to their shortest length, each still 1 to max_candidates valid values;
- ids are integers written without a fraction (the codec is strict: 3.0 is 422 invalid_type, as README says),
  while JSON Schema's `integer` also matches 3.0: such numbers are written as 3, the same JSON value.
Negative cases are left alone: they must stay invalid.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.generation import GenerationMode


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    positive = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
    if case.path not in ("/rank", "/rank/{model}") or not positive or not isinstance(case.body, dict):
        return case
    body = _without_fractions(case.body)
    columns = body.get("candidates")
    if isinstance(columns, dict) and columns and all(isinstance(column, list) for column in columns.values()):
        n_candidates = min(len(column) for column in columns.values())
        body["candidates"] = {name: column[:n_candidates] for name, column in columns.items()}
    case.body = body
    return case


def _without_fractions(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _without_fractions(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_fractions(item) for item in value]
    return value
