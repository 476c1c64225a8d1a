"""A valid, realistic POST /rank body for a feature schema (`ranker example-request`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from service.features.schema import PADDING_ID, FeatureSchema, FeatureSpec, Kind
from service.serving.settings import Settings
from service.store.artifact import read_manifest
from service.store.versions import resolve_version

DENSE_DECIMALS = 4  # short numbers: realistic client payloads, and smaller bodies


def example_request(schema: FeatureSchema, n: int = 100, columnar: bool = False, seed: int = 0) -> dict[str, Any]:
    """A request with one user and `n` candidates drawn like the model's training data (deterministic in seed)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    generator = torch.Generator().manual_seed(seed)
    batch = schema.example_batch(n, generator)
    user = {spec.name: _json_values(spec, batch[spec.name])[0] for spec in schema.user_features}
    columns = {spec.name: _json_values(spec, batch[spec.name]) for spec in schema.candidate_features}
    candidates: Any = columns if columnar else [{name: values[i] for name, values in columns.items()} for i in range(n)]
    user_number = int(torch.randint(0, 1_000_000, (1,), generator=generator))
    return {"user_id": f"user-{user_number}", "user": user, "candidates": candidates, "top_k": min(10, n)}


def example_request_for_store(
    model_path: Path | str | None = None, n: int = 100, columnar: bool = False, seed: int = 0
) -> dict[str, Any]:
    """example_request for a stored model: model_store/<name> (latest version) or a version folder;
    None means the model the service is configured to load (Settings().model_path)."""
    path = Settings().model_path if model_path is None else Path(model_path)
    manifest = read_manifest(resolve_version(path))
    return example_request(FeatureSchema.from_dict(manifest.feature_schema), n=n, columnar=columnar, seed=seed)


def _json_values(spec: FeatureSpec, tensor: torch.Tensor) -> list[Any]:
    """One JSON value per row: an id, a list of numbers, or an unpadded id sequence."""
    if spec.kind is Kind.DENSE:
        return [[round(x, DENSE_DECIMALS) for x in row] for row in tensor.tolist()]
    if spec.kind is Kind.SPARSE_ID:
        return tensor.tolist()
    return [[i for i in row if i != PADDING_ID] for row in tensor.tolist()]
