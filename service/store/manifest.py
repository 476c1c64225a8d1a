"""model.json: what a stored model is, what it takes and returns, and the sha256 of every file it holds."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 2
MANIFEST_FILE = "model.json"
PROGRAM_FILE = "program.json"
WEIGHTS_FILE = "weights.safetensors"
ARTIFACT_FILES = (PROGRAM_FILE, WEIGHTS_FILE)
BUILTIN = "builtin"
PACKAGED = "packaged"
CONVERT_COMMAND = "ranker convert"
COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a model name or version: one path component
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_TASKS = 64
MAX_NAME_CHARS = 128  # task and feature names: response keys and metric labels


class ArtifactError(ValueError):
    """A stored model cannot be written or trusted; the message names the file/field and the expectation."""


@dataclass(frozen=True)
class ModelManifest:
    """Contents of model.json. The program returns {task: score [N]} for the features in `feature_schema`."""

    name: str
    version: str
    feature_schema: dict[str, Any]
    user_features: list[str]
    tasks: list[str]
    task_weights: dict[str, float]
    files: dict[str, str]  # file name -> sha256
    source: dict[str, Any]  # {"kind": "builtin", "architecture", "hyper_parameters"} or {"kind": "packaged", ...}
    outputs: dict[str, Any] = field(default_factory=dict)  # how the model's own output became task scores
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    torch_version: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def architecture(self) -> str:
        """A short label of where the model came from: the built-in architecture or the packaged class."""
        if self.source.get("kind") == BUILTIN:
            return str(self.source.get("architecture", BUILTIN))
        return f"{PACKAGED}:{self.source.get('model_class', 'unknown')}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: Path) -> ModelManifest:
        if not isinstance(data, dict):
            raise ArtifactError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version == 1:
            raise ArtifactError(
                f"{source}: format_version 1 (rebuilt from model code by architecture name) is no longer served; "
                f"convert it once with `{CONVERT_COMMAND} {source.parent}`"
            )
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{source}: format_version is {version!r}, expected {FORMAT_VERSION}")
        required = {"name", "version", "feature_schema", "user_features", "tasks", "task_weights", "files", "source"}
        missing = sorted(required - set(data))
        if missing:
            raise ArtifactError(f"{source}: missing fields {missing}")
        _check_types(data, source)
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


def _check_types(data: dict[str, Any], source: Path) -> None:
    """Every field has the type and form the service relies on; the message names the field."""
    expected = {"name": str, "version": str, "feature_schema": dict, "user_features": list, "tasks": list,
                "task_weights": dict, "files": dict, "source": dict, "outputs": dict, "metrics": dict,
                "created_at": str, "torch_version": str}
    for key, kind in expected.items():
        if key in data and not isinstance(data[key], kind):
            raise ArtifactError(f"{source}: field {key!r} must be a {kind.__name__}, got {type(data[key]).__name__}")
    for key in ("name", "version"):
        if not COMPONENT.match(data[key]):
            raise ArtifactError(f"{source}: field {key!r} is {data[key][:200]!r}, expected one path component "
                                f"matching {COMPONENT.pattern}")
    if sorted(data["files"]) != sorted(ARTIFACT_FILES) or not all(
            isinstance(digest, str) and SHA256.match(digest) for digest in data["files"].values()):
        raise ArtifactError(f"{source}: field 'files' must map {sorted(ARTIFACT_FILES)} to sha256 hex digests, "
                            f"got {str(data['files'])[:300]}")
    _check_names(data, "tasks", source, max_count=MAX_TASKS, non_empty=True)
    _check_names(data, "user_features", source, max_count=None, non_empty=False)
    if sorted(data["task_weights"]) != sorted(data["tasks"]):
        raise ArtifactError(f"{source}: field 'task_weights' has keys {sorted(data['task_weights'])}, "
                            f"expected one per task {sorted(data['tasks'])}")
    for task, weight in data["task_weights"].items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ArtifactError(f"{source}: field 'task_weights' gives task {task!r} the weight {weight!r}, "
                                "expected a finite number")
    if not isinstance(data["source"].get("kind"), str):
        raise ArtifactError(f"{source}: field 'source' needs a string 'kind' ({BUILTIN!r} or {PACKAGED!r})")


def _check_names(data: dict[str, Any], key: str, source: Path, *, max_count: int | None, non_empty: bool) -> None:
    names = data[key]
    valid = all(isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS for name in names)
    if not valid or len(set(names)) != len(names) or (non_empty and not names) or (
            max_count is not None and len(names) > max_count):
        limits = (", at least one" if non_empty else "") + (f", at most {max_count}" if max_count else "")
        raise ArtifactError(f"{source}: field {key!r} must be a list of distinct names of 1 to {MAX_NAME_CHARS} "
                            f"characters{limits}, got {str(names)[:300]}")
