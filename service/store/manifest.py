"""model.json: what a stored model is, what it takes and returns, and the sha256 of every file it holds."""

from __future__ import annotations

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
    expected = {"name": str, "version": str, "feature_schema": dict, "user_features": list, "tasks": list,
                "task_weights": dict, "files": dict, "source": dict}
    for key, kind in expected.items():
        if not isinstance(data[key], kind):
            raise ArtifactError(f"{source}: field {key!r} must be a {kind.__name__}, got {type(data[key]).__name__}")
    if sorted(data["files"]) != sorted(ARTIFACT_FILES):
        raise ArtifactError(f"{source}: field 'files' lists {sorted(data['files'])}, expected {sorted(ARTIFACT_FILES)}")
    if not data["tasks"] or not all(isinstance(task, str) for task in data["tasks"]):
        raise ArtifactError(f"{source}: field 'tasks' must be a non-empty list of names, got {data['tasks']!r}")
    if sorted(data["task_weights"]) != sorted(data["tasks"]):
        raise ArtifactError(f"{source}: field 'task_weights' has keys {sorted(data['task_weights'])}, "
                            f"expected one per task {sorted(data['tasks'])}")
