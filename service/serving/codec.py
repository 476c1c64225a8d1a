"""POST /rank bodies -> model input tensors, for one feature schema.

A `RequestCodec` is built once per loaded model: it compiles the schema into a pydantic-core validator
(strict types, finite floats, id ranges, vector widths, sequence lengths, candidate limits), so a request
is parsed and validated in one pass in Rust (`decode`), then turned into tensors with numpy (`encode`).

Input rules (also in the API docs):
- Every feature of the schema is required; unknown features are refused.
- sparse_id: an integer in [0, max_id]; ids >= vocab_size score with the out-of-vocabulary row.
- dense: a list of exactly `dim` finite numbers (finite in float32).
- id_sequence: a list of at most `max_len` ids in [0, max_id], right-padded with 0 (0 is padding);
  longer lists are a 422, or are cut to their first max_len ids with sequence_overflow="truncate".
- candidates: either columnar (one list per candidate feature, all of the same length) or row-wise
  (a list of objects, one per candidate); 1 to max_candidates of them.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, NotRequired, Union

import numpy as np
import torch
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from torch import Tensor
from typing_extensions import TypedDict

from service.features.schema import FeatureSchema, FeatureSpec, Kind
from service.serving.errors import InvalidRequest, MalformedRequest
from service.serving.json_columns import ColumnReader, ColumnRules
from service.serving.validation import Problem, problems, request_error

USER_ID_MAX_CHARS = 256
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"  # body field or X-Request-Id header: safe to log and echo
COLUMNS_BRANCH = "CandidateColumns"
ROWS_BRANCH = "list[CandidateRow]"
FEATURE_CONTAINERS = ("user", "candidates")
FLOAT32_MAX = float(np.finfo(np.float32).max)  # dense values are float32 tensors: larger ones are not finite


@dataclass(frozen=True)
class DecodedRequest:
    """A validated body: plain Python values, candidates already columnar."""

    user_id: str
    request_id: str | None
    top_k: int | None
    user: dict[str, Any]
    candidates: dict[str, list[Any]]
    n_candidates: int


@dataclass(frozen=True)
class EncodedRequest:
    """Model inputs: user features at batch 1, item/cross features at batch n_candidates."""

    features: dict[str, Tensor]
    n_candidates: int


@dataclass(frozen=True)
class ReadRequest:
    """A body read end to end: its fields, its model inputs, and the seconds decoding and encoding took."""

    user_id: str
    request_id: str | None
    top_k: int | None
    encoded: EncodedRequest
    decode_s: float
    encode_s: float


class RequestCodec:
    """Validates /rank bodies against one feature schema and encodes them as model input tensors."""

    def __init__(
        self,
        schema: FeatureSchema,
        *,
        max_candidates: int,
        max_id: int,
        sequence_overflow: Literal["reject", "truncate"],
    ) -> None:
        self.schema = schema
        self.max_candidates = max_candidates
        self.max_id = max_id
        self.truncate_sequences = sequence_overflow == "truncate"
        self._validator = TypeAdapter(_request_type(schema, max_candidates, max_id, self.truncate_sequences))
        self._candidates = schema.candidate_features
        self._columns = ColumnReader(schema, ColumnRules(max_candidates, max_id, self.truncate_sequences,
                                                         USER_ID_MAX_CHARS, REQUEST_ID_PATTERN, FLOAT32_MAX))

    def read(self, body: bytes) -> ReadRequest:
        """A JSON body to model inputs: straight to arrays when it is provably valid (json_columns), else through
        the validator and the encoder, which name the field of any error."""
        started = time.perf_counter()
        fast = self._columns.read(body)
        if fast is not None:
            parsed_at = time.perf_counter()
            features = {spec.name: torch.from_numpy(self._oov(spec, fast.arrays[spec.name]))
                        for spec in self.schema.features}  # schema order, as encode's
            return ReadRequest(fast.user_id, fast.request_id, fast.top_k, EncodedRequest(features, fast.n_candidates),
                               parsed_at - started, time.perf_counter() - parsed_at)
        request = self.decode(body)
        decoded_at = time.perf_counter()
        encoded = self.encode(request)
        return ReadRequest(request.user_id, request.request_id, request.top_k, encoded, decoded_at - started,
                           time.perf_counter() - decoded_at)

    @staticmethod
    def _oov(spec: FeatureSpec, values: np.ndarray) -> np.ndarray:
        return values if spec.kind is Kind.DENSE else map_oov(values, spec)

    def json_schema(self, ref_template: str) -> dict[str, Any]:
        """JSON Schema of the bodies `decode` accepts (all it cannot say: columnar lists share one length)."""
        schema: dict[str, Any] = self._validator.json_schema(ref_template=ref_template)
        return schema

    def decode(self, body: bytes) -> DecodedRequest:
        """Parse and validate a JSON body; raises MalformedRequest or InvalidRequest naming the field."""
        try:
            request = self._validator.validate_json(body)
        except ValidationError as exc:
            raise _to_service_error(exc, self.schema) from None
        candidates = request["candidates"]
        if isinstance(candidates, list):  # row-wise -> columnar
            candidates = {spec.name: [row[spec.name] for row in candidates] for spec in self._candidates}
        n_candidates = _common_length(candidates)
        return DecodedRequest(
            user_id=request["user_id"],
            request_id=request.get("request_id"),
            top_k=request.get("top_k"),
            user=request["user"],
            candidates=candidates,
            n_candidates=n_candidates,
        )

    def encode(self, request: DecodedRequest) -> EncodedRequest:
        """Build the model input dict; ids past the vocabulary go to the OOV row, sequences are padded."""
        features: dict[str, Tensor] = {}
        for spec in self.schema.features:  # schema order, the capture's (and the V2 door's)
            if spec.is_user:
                features[spec.name] = self._encode_column(spec, [request.user[spec.name]], "user")
            else:
                features[spec.name] = self._encode_column(spec, request.candidates[spec.name], "candidates")
        return EncodedRequest(features=features, n_candidates=request.n_candidates)

    def _encode_column(self, spec: FeatureSpec, values: list[Any], container: str) -> Tensor:
        if spec.kind is Kind.SPARSE_ID:
            return torch.from_numpy(map_oov(np.asarray(values, dtype=np.int64), spec))  # [B]
        if spec.kind is Kind.DENSE:
            field_of_row = (lambda row: f"user.{spec.name}") if container == "user" else (
                lambda row: f"candidates.{spec.name}[{row}]")
            return torch.from_numpy(finite_float32(values, spec, field_of_row))
        return torch.from_numpy(self._pad_sequences(spec, values))

    def _pad_sequences(self, spec: FeatureSpec, sequences: list[list[int]]) -> np.ndarray:
        if self.truncate_sequences:
            sequences = [sequence[: spec.max_len] for sequence in sequences]
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        flat = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
        padded = np.zeros((len(sequences), spec.max_len), dtype=np.int64)  # [B, max_len], 0 = padding
        padded[np.arange(spec.max_len) < lengths[:, None]] = flat
        return map_oov(padded, spec)

    def fit_padded_sequences(self, padded: np.ndarray, spec: FeatureSpec, field: str) -> np.ndarray:
        """Already padded sequences [B, L] (int64) at the model's width [B, max_len] by the same rules as a /rank
        list: shorter ones right-padded with 0, longer ones refused (or cut with sequence_overflow="truncate");
        ids past the vocabulary go to the OOV row."""
        length = padded.shape[1]
        if length > spec.max_len and not self.truncate_sequences:
            raise InvalidRequest(f"{field}: sequence {spec.name!r} holds at most {spec.max_len} ids, got {length} "
                                 "columns", field=field, code="sequence_too_long")
        fitted = np.zeros((padded.shape[0], spec.max_len), dtype=np.int64)  # [B, max_len], 0 = padding
        width = min(length, spec.max_len)
        fitted[:, :width] = padded[:, :width]
        return map_oov(fitted, spec)


def map_oov(ids: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Ids >= vocab_size score with the out-of-vocabulary row `vocab_size` (in place on an int64 array)."""
    clamped: np.ndarray = np.minimum(ids, spec.vocab_size, out=ids)
    return clamped


def finite_float32(values: Any, spec: FeatureSpec, field_of_row: Callable[[int], str]) -> np.ndarray:
    """Dense values [B, dim] as float32; InvalidRequest(non_finite) naming the first row with a value that is NaN,
    infinite or past float32's range (finite in float64, inf once a float32)."""
    with np.errstate(over="ignore", invalid="ignore"):  # float32 overflow becomes inf, refused just below
        dense = np.asarray(values, dtype=np.float32)  # [B, dim]
    finite = np.isfinite(dense)
    if not finite.all():
        row = int(np.flatnonzero(~finite.reshape(dense.shape[0], -1).all(axis=1))[0])
        raise InvalidRequest(f"feature {spec.name!r} has a value outside float32's finite range",
                             field=field_of_row(row), code="non_finite")
    return dense


def _common_length(columns: dict[str, list[Any]]) -> int:
    """The number of candidates; names the column that disagrees with the most common length."""
    lengths = {name: len(column) for name, column in columns.items()}
    counts = Counter(lengths.values())
    n_candidates = max(counts, key=lambda length: (counts[length], length))
    for name, length in lengths.items():
        if length != n_candidates:
            raise InvalidRequest(
                f"candidates.{name}: has {length} values but the other columns have {n_candidates}; "
                "every candidate column needs one value per candidate",
                field=f"candidates.{name}",
                code="length_mismatch",
            )
    return n_candidates


# --- the schema compiled into pydantic types (once per model) ---------------------------------------------

def _value_type(spec: FeatureSpec, max_id: int, truncate: bool) -> Any:
    """The JSON type of one value of a feature (one user's, or one candidate's)."""
    identifier = Annotated[int, Field(strict=True, ge=0, le=max_id)]  # an integer written without a fraction
    if spec.kind is Kind.SPARSE_ID:
        return identifier
    if spec.kind is Kind.DENSE:
        number = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
        return Annotated[list[number], Field(min_length=spec.dim, max_length=spec.dim)]
    return list[identifier] if truncate else Annotated[list[identifier], Field(max_length=spec.max_len)]


def _typed_dict(name: str, fields: dict[str, Any]) -> Any:
    typed = TypedDict(name, fields)  # type: ignore[misc]  # functional form: feature names may be any string
    typed.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return typed


def _request_type(schema: FeatureSchema, max_candidates: int, max_id: int, truncate: bool) -> Any:
    user = _typed_dict("UserFeatures", {s.name: _value_type(s, max_id, truncate) for s in schema.user_features})
    candidates = schema.candidate_features
    count = Field(min_length=1, max_length=max_candidates)
    # Types built at run time from the schema: mypy cannot follow them, pydantic reads them.
    columns = _typed_dict(
        COLUMNS_BRANCH,
        {s.name: Annotated[list[_value_type(s, max_id, truncate)], count] for s in candidates},  # type: ignore[misc]
    )
    row = _typed_dict("CandidateRow", {s.name: _value_type(s, max_id, truncate) for s in candidates})
    forms = Union[columns, Annotated[list[row], count]]  # type: ignore[valid-type]  # noqa: UP007
    candidate_forms = Annotated[forms, Field(union_mode="left_to_right")]
    return _typed_dict(
        "RankRequest",
        {
            "user_id": Annotated[str, Field(strict=True, min_length=1, max_length=USER_ID_MAX_CHARS)],
            "user": user,
            "candidates": candidate_forms,
            "top_k": NotRequired[Annotated[int, Field(strict=True, ge=1)] | None],
            "request_id": NotRequired[Annotated[str, Field(pattern=REQUEST_ID_PATTERN)] | None],
        },
    )


# --- pydantic errors -> one service error naming the field ------------------------------------------------

_TYPE_ERRORS = ("_type", "_parsing")


def _to_service_error(exc: ValidationError, schema: FeatureSchema) -> MalformedRequest | InvalidRequest:
    found = problems(exc)
    if any(problem.is_json_error for problem in found) or found[0].is_not_an_object:
        return request_error(exc)
    problem = _most_relevant(found)
    code = _error_code(problem.kind, problem.loc, schema)
    return InvalidRequest(_message(problem, code, schema), field=problem.field, code=code)


def _most_relevant(found: list[Problem]) -> Problem:
    """The first problem of the form the client used: a columnar body's problems, not that it is not rows (and
    so on), with the union branch left out of its location."""
    def wrong_branch(problem: Problem) -> bool:
        loc = problem.loc
        return len(loc) == 2 and loc[0] == "candidates" and problem.kind in ("dict_type", "list_type", "model_type")

    relevant = [problem for problem in found if not wrong_branch(problem)]
    if not relevant:
        return Problem(found[0].kind, ("candidates",),
                       "candidates must be an object of columns (columnar) or a list of objects (row-wise)")
    first = relevant[0]
    return replace(first, loc=_strip_union_branch(first.loc))


def _strip_union_branch(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    if len(loc) >= 2 and loc[0] == "candidates" and loc[1] in (COLUMNS_BRANCH, ROWS_BRANCH):
        return (loc[0],) + loc[2:]
    return loc


def _feature_of(loc: tuple[Any, ...], schema: FeatureSchema) -> FeatureSpec | None:
    if not loc or loc[0] not in FEATURE_CONTAINERS:
        return None
    name = next((part for part in loc[1:] if isinstance(part, str)), None)
    return schema.get(name) if name is not None and name in schema else None


def _error_code(kind: str, loc: tuple[Any, ...], schema: FeatureSchema) -> str:
    in_features = bool(loc) and loc[0] in FEATURE_CONTAINERS and len(loc) > 1
    spec = _feature_of(loc, schema)
    if kind == "missing":
        return "missing_feature" if in_features else "missing_field"
    if kind == "extra_forbidden":
        return "unknown_feature" if in_features else "unknown_field"
    if kind == "finite_number" or (spec is not None and spec.kind is Kind.DENSE and kind.endswith("_equal")):
        return "non_finite"  # NaN, Infinity, or past float32's range
    if kind in ("greater_than_equal", "less_than_equal") and spec is not None:
        return "id_out_of_range"
    if kind in ("too_short", "too_long"):
        if loc[:1] == ("candidates",) and (len(loc) == 1 or (len(loc) == 2 and isinstance(loc[1], str))):
            return "empty_candidates" if kind == "too_short" else "too_many_candidates"
        if spec is not None:
            return "wrong_width" if spec.kind is Kind.DENSE else "sequence_too_long"
    if kind.endswith(_TYPE_ERRORS):
        return "invalid_type"
    return "invalid_value"


def _message(problem: Problem, code: str, schema: FeatureSchema) -> str:
    loc, field = problem.loc, problem.field or "body"
    spec = _feature_of(loc, schema)
    if code == "missing_feature":
        return f"{field}: feature is missing; every feature of the model's schema is required"
    if code == "unknown_feature":
        name = next(part for part in reversed(loc) if isinstance(part, str))
        if name in schema:
            where = "user" if schema.get(name).is_user else "candidates"
            return f"{field}: {name!r} is a feature of {where!r}, not of {loc[0]!r}"
        return f"{field}: {name!r} is not a feature of the loaded model; known: {list(schema.names)}"
    if code == "wrong_width" and spec is not None:
        return f"{field}: dense feature {spec.name!r} needs exactly {spec.dim} numbers ({problem.message})"
    if code == "sequence_too_long" and spec is not None:
        return f"{field}: sequence {spec.name!r} holds at most {spec.max_len} ids ({problem.message})"
    return f"{field}: {problem.message}"
