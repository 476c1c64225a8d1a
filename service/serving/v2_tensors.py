"""Open Inference Protocol input tensors -> the features' validated arrays -> model inputs.

Every input is checked against its feature (service/serving/v2_metadata.py: names, datatype, shape, the user's
batch of 1 and one N across candidates, 1 to max_candidates), its data read whole with numpy (`frombuffer` on
binary tensor data, `asarray` on a JSON data list, never a Python loop over values), ids checked in
[0, max_id], and the arrays encoded by the /rank codec's own rules (ids past the vocabulary -> the OOV row,
dense finite in float32, sequences fitted to max_len). Every error is an InvalidRequest naming the input.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Annotated, Any, NotRequired

import numpy as np
import torch
from pydantic import Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from service.features.schema import FeatureSpec, Kind
from service.serving.codec import RequestCodec, finite_float32, map_oov
from service.serving.errors import InvalidRequest
from service.serving.v2_metadata import datatype_of, input_shape
from service.serving.validation import problems

# V2 datatype -> (its little-endian wire dtype, the native dtype of the decoded array)
WIRE_DTYPES: dict[str, tuple[np.dtype[Any], np.dtype[Any]]] = {
    "INT64": (np.dtype("<i8"), np.dtype(np.int64)), "FP32": (np.dtype("<f4"), np.dtype(np.float32))}
UNSUPPORTED_PARAMETERS = ("shared_memory_region", "classification")  # extensions this server does not offer

NonNegative = Annotated[int, Field(strict=True, ge=0)]
_SIZE = TypeAdapter(NonNegative)


class V2Tensor(TypedDict):
    name: Annotated[str, Field(strict=True)]
    shape: list[NonNegative]
    datatype: Annotated[str, Field(strict=True)]
    parameters: NotRequired[dict[str, Any]]
    data: NotRequired[Any]


def read_inputs(
    inputs: list[V2Tensor], binary: memoryview, codec: RequestCodec
) -> tuple[dict[str, np.ndarray], int]:
    """Each feature's validated array (INT64 or FP32, the schema's shape) and the number of candidates N."""
    schema = codec.schema
    by_name = _check_names(inputs, codec)
    chunks = _binary_chunks(inputs, binary)
    n_candidates = _candidate_count(by_name, codec)
    arrays: dict[str, np.ndarray] = {}
    for spec in schema.features:
        tensor = by_name[spec.name]
        shape = _check_shape(spec, tensor, 1 if spec.is_user else n_candidates)
        arrays[spec.name] = _read_values(spec, tensor, chunks.get(spec.name), shape, codec.max_id)
    return arrays, n_candidates


def encode_inputs(arrays: dict[str, np.ndarray], codec: RequestCodec) -> dict[str, torch.Tensor]:
    """Model inputs by the /rank codec's rules: OOV row for ids past the vocabulary, dense finite in float32,
    sequences fitted to max_len."""
    features: dict[str, torch.Tensor] = {}
    for spec in codec.schema.features:
        values = arrays[spec.name]
        if spec.kind is Kind.SPARSE_ID:
            encoded = map_oov(values.reshape(-1), spec)  # [B]
        elif spec.kind is Kind.DENSE:
            encoded = finite_float32(values, spec, functools.partial(_row_field, spec.name))  # [B, dim]
        else:
            encoded = codec.fit_padded_sequences(values, spec, spec.name)  # [B, max_len]
        features[spec.name] = torch.from_numpy(encoded)
    return features


def _check_names(inputs: list[V2Tensor], codec: RequestCodec) -> dict[str, V2Tensor]:
    by_name: dict[str, V2Tensor] = {}
    for tensor in inputs:
        name = tensor["name"]
        if name not in codec.schema:
            raise invalid_input(name, f"input {name[:100]!r} is not a feature of the model; its inputs are "
                                      f"{list(codec.schema.names)}", "unknown_feature")
        if name in by_name:
            raise invalid_input(name, f"input {name!r} is given twice", "duplicate_input")
        refuse_unsupported(tensor.get("parameters", {}), f"input {name!r}")
        by_name[name] = tensor
    for spec in codec.schema.features:
        if spec.name not in by_name:
            raise invalid_input(spec.name, f"input {spec.name!r} is missing; every feature of the model is an input "
                                           "(GET /v2/models/{name} lists them)", "missing_feature")
    return by_name


def _binary_chunks(inputs: list[V2Tensor], binary: memoryview) -> dict[str, memoryview]:
    """Each binary input's bytes, cut in input order; their sizes must add up to exactly what follows the header."""
    chunks: dict[str, memoryview] = {}
    offset = 0
    for tensor in inputs:
        name = tensor["name"]
        size = parameter(_SIZE, tensor.get("parameters", {}), "binary_data_size", f"inputs.{name}.parameters")
        if size is None:
            continue
        if "data" in tensor:
            raise invalid_input(name, f"input {name!r} has both JSON data and binary_data_size", "invalid_value")
        if offset + size > len(binary):
            raise invalid_input(name, f"input {name!r}: binary_data_size {size} runs past the body: only "
                                      f"{len(binary) - offset} bytes of binary data remain", "truncated_binary_data")
        chunks[name] = binary[offset:offset + size]
        offset += size
    if offset != len(binary):
        raise InvalidRequest(f"{len(binary)} bytes of binary data follow the JSON header but the inputs' "
                             f"binary_data_size add up to {offset}", field="binary_data", code="invalid_binary_data")
    return chunks


def _candidate_count(by_name: dict[str, V2Tensor], codec: RequestCodec) -> int:
    """N: the first dimension of every candidate input, 1 to max_candidates; the input that disagrees with the
    most common N is named (as /rank names the odd column)."""
    rows = {spec.name: (by_name[spec.name]["shape"] or [0])[0] for spec in codec.schema.candidate_features}
    counts = Counter(rows.values())
    n_candidates = max(counts, key=lambda n: (counts[n], n))
    for name, n in rows.items():
        if n != n_candidates or not by_name[name]["shape"]:
            raise invalid_input(name, f"input {name!r} has shape {by_name[name]['shape']}: every candidate input has "
                                      f"N rows first, and the others have N = {n_candidates}", "length_mismatch")
    if not 1 <= n_candidates <= codec.max_candidates:
        code = "empty_candidates" if n_candidates < 1 else "too_many_candidates"
        raise invalid_input(next(iter(rows)), f"N = {n_candidates} candidates in every candidate input, must be 1 to "
                                              f"{codec.max_candidates} (max_candidates)", code)
    return n_candidates


def _check_shape(spec: FeatureSpec, tensor: V2Tensor, batch: int) -> tuple[int, ...]:
    """The input's shape, checked against the feature's: datatype, rank, batch (1 for a user feature) and width."""
    name, shape, datatype = spec.name, tuple(tensor["shape"]), tensor["datatype"]
    if datatype != datatype_of(spec):
        raise invalid_input(name, f"input {name!r} ({spec.kind.value}) has datatype {datatype[:20]!r}, expected "
                                  f"{datatype_of(spec)}", "invalid_type")
    expected = [dim if dim != -1 else batch for dim in input_shape(spec)]
    matches = list(shape) == expected or (spec.kind is Kind.SPARSE_ID and list(shape) == [batch, 1])
    if spec.kind is Kind.ID_SEQUENCE:  # any width; fitted to max_len by the codec's rules
        matches = len(shape) == 2 and shape[0] == batch
    if not matches:
        side = "a user feature: batch 1" if spec.is_user else f"a candidate feature: N = {batch} rows"
        width = f", L <= {spec.max_len} ids right-padded with 0" if spec.kind is Kind.ID_SEQUENCE else ""
        wanted = f"[{batch}, L]" if spec.kind is Kind.ID_SEQUENCE else str(expected)
        raise invalid_input(name, f"input {name!r} has shape {list(shape)}, expected {wanted} ({side}{width})",
                                  "wrong_shape")
    return shape


def _read_values(
    spec: FeatureSpec, tensor: V2Tensor, chunk: memoryview | None, shape: tuple[int, ...], max_id: int
) -> np.ndarray:
    name, datatype = spec.name, tensor["datatype"]
    wire, native = WIRE_DTYPES[datatype]
    count = math.prod(shape)
    if chunk is not None:
        if len(chunk) != count * wire.itemsize:
            raise invalid_input(name, f"input {name!r}: binary_data_size is {len(chunk)} bytes, shape {list(shape)} of "
                                      f"{datatype} needs {count * wire.itemsize}", "invalid_binary_data")
        values = np.frombuffer(chunk, dtype=wire).astype(native)  # a writable native copy
    elif "data" in tensor:
        values = _json_values(name, tensor["data"], datatype, count, max_id)
    else:
        raise invalid_input(name, f"input {name!r} has no data (neither `data` nor binary_data_size)", "missing_data")
    values = values.reshape(shape)
    if datatype == "INT64" and values.size and (values.min() < 0 or values.max() > max_id):
        bad = int(np.flatnonzero((values < 0) | (values > max_id))[0])
        raise invalid_input(name, f"input {name!r}: ids must be in [0, {max_id}] (max_id), got {values.flat[bad]} at "
                                  f"flat index {bad}", "id_out_of_range")
    return values


def _json_values(name: str, data: Any, datatype: str, count: int, max_id: int) -> np.ndarray:
    """A JSON data list (flat or nested, row-major) as a flat array; integers only for INT64."""
    try:
        values = np.asarray(data)
    except (ValueError, OverflowError):
        raise invalid_input(name, f"input {name!r}: data is not a rectangular array of numbers",
                                  "invalid_type") from None
    kinds = "iu" if datatype == "INT64" else "iuf"
    if values.size != count:
        raise invalid_input(name, f"input {name!r}: data has {values.size} values, its shape needs {count}",
                                  "wrong_shape")
    if values.size and values.dtype.kind not in kinds:
        what = f"integer ids in [0, {max_id}] written without a fraction" if datatype == "INT64" else "numbers"
        raise invalid_input(name, f"input {name!r}: {datatype} data must be {what}", "invalid_type")
    if values.dtype.kind == "u":  # numpy's choice for integers past int64: past every max_id
        raise invalid_input(name, f"input {name!r}: an id is past the INT64 range", "id_out_of_range")
    flat: np.ndarray = values.reshape(-1).astype(np.int64 if datatype == "INT64" else np.float64)
    return flat


def parameter(adapter: TypeAdapter[Any], parameters: dict[str, Any], key: str, where: str) -> Any:
    """parameters[key] validated by `adapter`, or None when absent; `where` names the parameters object."""
    if key not in parameters:
        return None
    try:
        return adapter.validate_python(parameters[key])
    except ValidationError as exc:
        message = problems(exc)[0].message
        raise InvalidRequest(f"{where[:150]}.{key}: {message}", field=f"{where[:150]}.{key}",
                             code="invalid_value") from None


def refuse_unsupported(parameters: dict[str, Any], what: str) -> None:
    for key in UNSUPPORTED_PARAMETERS:
        if parameters.get(key):
            raise InvalidRequest(f"{what}: parameter {key!r} is not supported by this server",
                                 field=key, code="unsupported_parameter")


def _row_field(name: str, row: int) -> str:
    return f"{name}[{row}]"


def invalid_input(name: str, message: str, code: str) -> InvalidRequest:
    return InvalidRequest(message, field=name[:100], code=code)
