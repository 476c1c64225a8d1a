"""What the Open Inference Protocol (KServe V2) says about this server and its model: the server and model
metadata, each feature as a named input tensor and each task as an output, and which model names and versions
are served. No HTTP: the routes (service/api/routes/v2.py) turn these into responses.

One input per feature of the schema, named as the feature (-1: the number of candidates N):
    sparse_id   INT64  user [1]        candidates [-1]          ([1, 1] and [N, 1] are accepted too)
    dense       FP32   user [1, dim]   candidates [-1, dim]
    id_sequence INT64  user [1, L]     candidates [-1, L]       L = max_len, right-padded with 0
One FP32 [-1] output per task, and `final_scores` (the task-weighted sum that orders the candidates).
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from service.features.schema import FeatureSpec, Kind
from service.serving.errors import ModelNotFound
from service.serving.serving_model import ServingModel

SERVER_NAME = "mari-serve"
PACKAGE = "mari-serve"
PLATFORM = "mari-serve_pytorch"
EXTENSIONS = ("binary_tensor_data",)
FINAL_SCORES = "final_scores"
VARIABLE = -1  # V2's mark of a dimension the request chooses (here: N, the number of candidates)
INT64, FP32 = "INT64", "FP32"


def server_metadata() -> dict[str, Any]:
    """GET /v2: the server's name, version and the protocol extensions it supports."""
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown"
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def datatype_of(spec: FeatureSpec) -> str:
    return FP32 if spec.kind is Kind.DENSE else INT64


def input_shape(spec: FeatureSpec) -> list[int]:
    """The shape a request sends for `spec`: batch 1 for a user feature, N (VARIABLE) for a candidate one."""
    batch = 1 if spec.is_user else VARIABLE
    if spec.kind is Kind.SPARSE_ID:
        return [batch]
    return [batch, spec.dim if spec.kind is Kind.DENSE else spec.max_len]


def output_names(serving: ServingModel) -> tuple[str, ...]:
    """Every task, then final_scores (unless a task already has that name: the task's scores win)."""
    return serving.tasks if FINAL_SCORES in serving.tasks else (*serving.tasks, FINAL_SCORES)


def model_metadata(serving: ServingModel) -> dict[str, Any]:
    """GET /v2/models/{name}: the inputs (one per feature) and outputs (one per task, and final_scores)."""
    return {
        "name": serving.name,
        "versions": [serving.version],
        "platform": PLATFORM,
        "inputs": [{"name": spec.name, "datatype": datatype_of(spec), "shape": input_shape(spec)}
                   for spec in serving.codec.schema.features],
        "outputs": [{"name": name, "datatype": FP32, "shape": [VARIABLE]} for name in output_names(serving)],
    }


def check_model(serving: ServingModel, name: str, version: str | None) -> None:
    """ModelNotFound unless `name` (and `version`, when the path gives one) is what this server serves now."""
    if name != serving.name:
        raise ModelNotFound(f"unknown model {name[:100]!r}: this server serves model {serving.name!r}", field="model")
    if version is not None and version != serving.version:
        raise ModelNotFound(f"model {serving.name!r} has no version {version[:100]!r} loaded; it serves version "
                            f"{serving.version!r}", field="version")
