"""The fast way in for POST /rank: a valid JSON body straight to model input arrays.

The codec's validator (service/serving/codec.py) builds one Python object per value, and the encoder then
turns those lists back into arrays; at N = 1000 that was most of the time outside the model. Here simdjson
parses the body (C++). A columnar body's columns are copied into arrays by simdjson itself (`as_buffer`), so no
Python object is made per value; row-wise candidates are read row by row in place (an id is one Python int, a
dense or sequence value one `as_buffer` copy) and each column made an array in one call. The schema's rules are
checked on whole arrays.

This path only ever *accepts*. It takes a body it can prove valid by the rules the validator applies: exactly
the schema's feature names, strict integer ids in [0, max_id] (simdjson refuses floats, booleans, null and
strings in an integer buffer; numpy's dtype shows them in a row-wise column), finite numbers within float32 of
exactly `dim` per row, sequence lengths, the candidate count, the top-level fields. Anything else, or anything
it is not sure of (duplicate keys, a `[` in a string, a number simdjson cannot parse, a `true` or `false` in a
row-wise body), returns None and the validator decides, so every error keeps its one message naming the field.
tests/serving/test_json_columns.py holds the two paths to the same answers on valid and broken bodies.

`as_buffer` flattens nested arrays of any depth, so depth is proven by counting: every row is an array of the
right length, and the body holds exactly as many `[` as the arrays accepted here, so no row hides another
array.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import simdjson

from service.features.schema import FeatureSchema, FeatureSpec, Kind

TOP_LEVEL = frozenset({"user_id", "user", "candidates", "top_k", "request_id"})
REQUIRED = frozenset({"user_id", "user", "candidates"})
BOOLEAN_TOKENS = (b"true", b"false")

class NotFast(Exception):
    """The body is not provably valid on this path: the validator decides."""


@dataclass(frozen=True)
class FastRequest:
    """A valid body's fields and its features as arrays (user leaves at batch 1, candidates at batch N)."""

    user_id: str
    request_id: str | None
    top_k: int | None
    arrays: dict[str, np.ndarray]
    n_candidates: int


@dataclass(frozen=True)
class ColumnRules:
    """What a valid body may hold (the codec's limits and the validator's field rules)."""

    max_candidates: int
    max_id: int
    truncate_sequences: bool
    user_id_max_chars: int
    request_id_pattern: str
    float_max: float


class ColumnReader:
    """Reads the columnar bodies of one feature schema; see the module docstring for what it accepts."""

    def __init__(self, schema: FeatureSchema, rules: ColumnRules) -> None:
        self.user_specs = schema.user_features
        self.candidate_specs = schema.candidate_features
        self.user_names = frozenset(s.name for s in self.user_specs)
        self.candidate_names = frozenset(s.name for s in self.candidate_specs)
        self.rules = rules
        self.request_id = re.compile(rules.request_id_pattern)

    def read(self, body: bytes) -> FastRequest | None:
        """The body's fields and arrays when every rule holds, else None."""
        try:
            # a parser per call: parsers are not thread-safe and cost well under a microsecond to make
            document = simdjson.Parser().parse(body)
            return self._read(document, body)
        except Exception:  # NotFast, or simdjson's word for not JSON, a wrong type, a number past 64 bits...
            return None  # ...: whatever it is, the validator gives the client its answer

    def _read(self, request: Any, body: bytes) -> FastRequest:
        if not isinstance(request, simdjson.Object):
            raise NotFast
        keys = _unique_keys(request)
        if not (REQUIRED <= keys <= TOP_LEVEL):
            raise NotFast
        user_id, top_k, request_id = request["user_id"], request.get("top_k"), request.get("request_id")
        if type(user_id) is not str or not 1 <= len(user_id) <= self.rules.user_id_max_chars:
            raise NotFast
        if top_k is not None and (type(top_k) is not int or top_k < 1):
            raise NotFast
        if request_id is not None and (type(request_id) is not str or not self.request_id.fullmatch(request_id)):
            raise NotFast
        user, candidates = request["user"], request["candidates"]
        if not isinstance(user, simdjson.Object) or _unique_keys(user) != self.user_names:
            raise NotFast
        count = _Brackets()
        arrays = {spec.name: self._user_value(spec, user[spec.name], count) for spec in self.user_specs}
        if isinstance(candidates, simdjson.Array):
            n = self._rows(candidates, body, arrays, count)
        elif isinstance(candidates, simdjson.Object) and _unique_keys(candidates) == self.candidate_names:
            columns: dict[str, Any] = {name: candidates[name] for name in self.candidate_names}
            n = len(next(iter(columns.values())))
            if not 1 <= n <= self.rules.max_candidates:
                raise NotFast
            for spec in self.candidate_specs:
                arrays[spec.name] = self._column(spec, columns[spec.name], n, count)
        else:
            raise NotFast
        if body.count(b"[") != count.arrays:
            raise NotFast  # an array hidden in a row (as_buffer flattens it), or a "[" in a string
        return FastRequest(user_id, request_id, top_k, arrays, n)

    def _user_value(self, spec: FeatureSpec, value: Any, count: _Brackets) -> np.ndarray:
        """One user's value at batch 1."""
        if spec.kind is Kind.SPARSE_ID:
            if type(value) is not int or not 0 <= value <= self.rules.max_id:
                raise NotFast
            return np.array([value], dtype=np.int64)
        if not isinstance(value, simdjson.Array):
            raise NotFast
        count.arrays += 1
        if spec.kind is Kind.DENSE:
            if len(value) != spec.dim:
                raise NotFast
            return self._dense(value, (1, spec.dim))
        return self._sequences(spec, [len(value)], value)

    def _column(self, spec: FeatureSpec, column: Any, n: int, count: _Brackets) -> np.ndarray:
        """One candidate feature's N values."""
        if not isinstance(column, simdjson.Array) or len(column) != n:
            raise NotFast
        count.arrays += 1
        if spec.kind is Kind.SPARSE_ID:
            return self._ids(_buffer(column, "i", n).copy())  # writable: out-of-vocabulary ids are mapped in place
        rows: Any = column
        lengths = [len(row) for row in rows]  # TypeError (not fast) when a row is a number
        count.arrays += n
        if spec.kind is Kind.DENSE:
            if lengths.count(spec.dim) != n:
                raise NotFast
            return self._dense(column, (n, spec.dim))
        return self._sequences(spec, lengths, column)

    def _rows(self, candidates: Any, body: bytes, arrays: dict[str, np.ndarray], count: _Brackets) -> int:
        """Row-wise candidates: each row read in place (simdjson cannot read a field across objects, and making
        every row a dict cost more than the model's tail at N = 1000): ids as Python ints, into numpy in one call
        per column, whose dtype proves them integers; each dense or sequence value copied by `as_buffer`."""
        if any(token in body for token in BOOLEAN_TOKENS):
            raise NotFast  # Python's True and False become 1 and 0 in numpy; the validator refuses them
        n = len(candidates)
        if not 1 <= n <= self.rules.max_candidates:
            raise NotFast
        count.arrays += 1
        width = len(self.candidate_names)
        columns: dict[str, list[Any]] = {spec.name: [] for spec in self.candidate_specs}
        for row in candidates:
            # with every name found below (or KeyError), the same count of fields means the same key set, and no
            # name given twice (simdjson would read the first, the validator the last)
            if not isinstance(row, simdjson.Object) or len(row) != width:
                raise NotFast
            for name, column in columns.items():
                column.append(row[name])
        for spec in self.candidate_specs:
            values = columns[spec.name]
            if spec.kind is Kind.SPARSE_ID:
                arrays[spec.name] = self._ids(_typed(np.array(values), np.int64, (n,)))
                continue
            if not all(isinstance(value, simdjson.Array) for value in values):
                raise NotFast
            count.arrays += n
            lengths = [len(value) for value in values]
            if spec.kind is Kind.DENSE:
                if lengths.count(spec.dim) != n:
                    raise NotFast
                dense = _joined(values, "d", n * spec.dim).reshape(n, spec.dim)
                arrays[spec.name] = self._in_float32(dense)
                continue
            arrays[spec.name] = self._padded(spec, lengths, self._ids(_joined(values, "i", sum(lengths))))
        return n

    def _ids(self, ids: np.ndarray) -> np.ndarray:
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) > self.rules.max_id):
            raise NotFast
        return ids

    def _dense(self, values: Any, shape: tuple[int, int]) -> np.ndarray:
        """simdjson's numbers (doubles, as the validator's) as float32 `shape`."""
        return self._in_float32(_buffer(values, "d", shape[0] * shape[1]).reshape(shape))

    def _in_float32(self, values: np.ndarray) -> np.ndarray:
        """Doubles finite within float32, as float32."""
        if values.size and not float(np.abs(values).max()) <= self.rules.float_max:  # NaN fails too
            raise NotFast
        return values.astype(np.float32)

    def _sequences(self, spec: FeatureSpec, lengths: list[int], sequences: Any) -> np.ndarray:
        return self._padded(spec, lengths, self._ids(_buffer(sequences, "i", sum(lengths))))

    def _padded(self, spec: FeatureSpec, lengths: list[int], flat: np.ndarray) -> np.ndarray:
        """Id lists padded with 0 to [B, max_len] (cut to max_len when truncating, else longer is not fast)."""
        sizes = np.array(lengths, dtype=np.int64)
        if self.rules.truncate_sequences:
            starts = np.cumsum(sizes) - sizes
            sizes = np.minimum(sizes, spec.max_len)
            flat = flat[np.repeat(starts, sizes) + _ranges(sizes)]
        elif sizes.size and int(sizes.max()) > spec.max_len:
            raise NotFast
        padded = np.zeros((len(lengths), spec.max_len), dtype=np.int64)  # [B, max_len], 0 = padding
        padded[np.arange(spec.max_len) < sizes[:, None]] = flat
        return padded


@dataclass
class _Brackets:
    """Arrays accepted so far: the body must hold exactly this many '['."""

    arrays: int = 0


def _unique_keys(value: Any) -> frozenset[str]:
    """An object's keys; duplicates (which the validator resolves as last-wins, simdjson as first) are not fast."""
    keys = list(value.keys())
    unique = frozenset(keys)
    if len(unique) != len(keys):
        raise NotFast
    return unique


def _typed(values: np.ndarray, dtype: type[np.generic], shape: tuple[int, ...]) -> np.ndarray:
    """`values` when numpy made them `dtype` of `shape` (a string, None, a float among ids, a ragged or deeper list
    gives another dtype or shape)."""
    if values.dtype != dtype or values.shape != shape:
        raise NotFast
    return values


def _buffer(values: Any, of_type: str, expected: int) -> np.ndarray:
    """Every number under `values` (flattened) as int64 ("i") or float64 ("d"); exactly `expected` of them."""
    flat = np.frombuffer(values.as_buffer(of_type=of_type), dtype=np.int64 if of_type == "i" else np.float64)
    if flat.size != expected:
        raise NotFast
    return flat


def _joined(values: list[Any], of_type: str, expected: int) -> np.ndarray:
    """Every number under each of `values` (simdjson arrays), in order, as int64 ("i") or float64 ("d"); exactly
    `expected` of them."""
    joined = b"".join([value.as_buffer(of_type=of_type) for value in values])
    flat = np.frombuffer(joined, dtype=np.int64 if of_type == "i" else np.float64)
    if flat.size != expected:
        raise NotFast
    return flat


def _ranges(sizes: np.ndarray) -> np.ndarray:
    """0..size-1 for each size, concatenated."""
    ends = np.cumsum(sizes)
    ranges: np.ndarray = np.arange(int(ends[-1]) if ends.size else 0) - np.repeat(ends - sizes, sizes)
    return ranges
