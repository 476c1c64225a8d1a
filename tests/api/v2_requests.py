"""Open Inference Protocol requests built from the same example as a /rank body, with the real tritonclient."""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.http as triton

from service.features.schema import FeatureSchema, Kind
from service.serving.v2_metadata import datatype_of


def feature_arrays(schema: FeatureSchema, request: dict[str, Any]) -> dict[str, np.ndarray]:
    """A /rank body's features as V2 arrays: user at batch 1, candidates at N, sequences padded with 0."""
    candidates = request["candidates"]
    if isinstance(candidates, list):  # row-wise -> columnar
        candidates = {spec.name: [row[spec.name] for row in candidates] for spec in schema.candidate_features}
    arrays: dict[str, np.ndarray] = {}
    for spec in schema.features:
        values = [request["user"][spec.name]] if spec.is_user else candidates[spec.name]
        if spec.kind is Kind.SPARSE_ID:
            arrays[spec.name] = np.asarray(values, dtype=np.int64)  # [B]
        elif spec.kind is Kind.DENSE:
            arrays[spec.name] = np.asarray(values, dtype=np.float32)  # [B, dim]
        else:
            padded = np.zeros((len(values), spec.max_len), dtype=np.int64)  # [B, max_len]
            for row, sequence in enumerate(values):
                padded[row, :len(sequence)] = sequence
            arrays[spec.name] = padded
    return arrays


def infer_inputs(
    schema: FeatureSchema, arrays: dict[str, np.ndarray], binary: bool = True
) -> list[triton.InferInput]:
    """One InferInput per feature, its data in binary or in JSON."""
    inputs = []
    for spec in schema.features:
        array = arrays[spec.name]
        tensor = triton.InferInput(spec.name, list(array.shape), datatype_of(spec))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def request_body(
    inputs: list[triton.InferInput], outputs: list[triton.InferRequestedOutput] | None = None, **parameters: Any
) -> tuple[bytes, int | None]:
    """The body tritonclient would send, and its JSON header's length (None: no binary data follows)."""
    body, json_size = triton.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, parameters=parameters or None)
    return body, json_size
