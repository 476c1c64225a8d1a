"""Model artifacts: model_store/<name>/<version>/{model.json, weights.safetensors}; never pickle.

Loading verifies, before a model is handed out: the manifest fields, the sha256 of the weights file, that the
hyper-parameters rebuild the architecture, that the stored feature schema is the one the architecture
expects, and that every weight tensor has the expected name and shape. Any failure is an ArtifactError
naming the file or field and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from service.features.schema import FeatureSchema
from service.models.registry import Architecture, config_to_dict, get_architecture, json_ready

FORMAT_VERSION = 1
MANIFEST_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HASH_CHUNK = 1 << 20


class ArtifactError(ValueError):
    """A stored model cannot be written or trusted; the message names the file/field and the expectation."""


@dataclass(frozen=True)
class ModelManifest:
    """Contents of model.json."""

    name: str
    version: str
    architecture: str
    hyper_parameters: dict[str, Any]
    feature_schema: dict[str, Any]
    tasks: list[str]
    task_weights: dict[str, float]
    weights_sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    weights_file: str = WEIGHTS_FILE
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: Path) -> ModelManifest:
        if not isinstance(data, dict):
            raise ArtifactError(f"{source}: expected a JSON object, got {type(data).__name__}")
        required = {"name", "version", "architecture", "hyper_parameters", "feature_schema", "tasks",
                    "task_weights", "weights_sha256", "weights_file", "format_version"}
        missing = sorted(required - set(data))
        if missing:
            raise ArtifactError(f"{source}: missing fields {missing}")
        if data["format_version"] != FORMAT_VERSION:
            raise ArtifactError(f"{source}: format_version is {data['format_version']!r}, expected {FORMAT_VERSION}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True)
class LoadedArtifact:
    manifest: ModelManifest
    model: nn.Module  # eval mode
    schema: FeatureSchema
    path: Path  # the version folder


def _natural_key(name: str) -> list[tuple[int, Any]]:
    """v2 < v10: digit runs compare as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part]


def _check_component(kind: str, value: str) -> None:
    if not _SAFE_COMPONENT.match(value):
        raise ArtifactError(f"{kind} {value!r} must match {_SAFE_COMPONENT.pattern} (a single path component)")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_version(path: Path | str) -> Path:
    """A version folder itself, or the latest version (natural sort) under a model folder."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        return path
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such model or version folder")
    versions = [child for child in path.iterdir()
                if child.is_dir() and not child.name.startswith(".") and (child / MANIFEST_FILE).is_file()]
    if not versions:
        raise ArtifactError(f"{path}: no version folder containing {MANIFEST_FILE}")
    return max(versions, key=lambda child: _natural_key(child.name))


def next_version(store_root: Path | str, name: str) -> str:
    """"v<N+1>" where N is the highest existing "v<N>" of this model ("v1" for a new one)."""
    model_dir = Path(store_root) / name
    numbers = [int(match.group(1)) for child in (model_dir.iterdir() if model_dir.is_dir() else [])
               if (match := re.fullmatch(r"v(\d+)", child.name))]
    return f"v{max(numbers, default=0) + 1}"


def save_artifact(
    store_root: Path | str, name: str, version: str, architecture: str, config: Any, model: nn.Module,
    metrics: dict[str, Any],
) -> Path:
    """Write model.json + weights.safetensors atomically to store_root/name/version; refuses to overwrite."""
    _check_component("model name", name)
    _check_component("version", version)
    arch = get_architecture(architecture)
    target = Path(store_root) / name / version
    if target.exists():
        raise ArtifactError(f"{target}: version already exists; artifacts are immutable")
    staging = target.parent / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        state = {key: tensor.detach().cpu().contiguous() for key, tensor in model.state_dict().items()}
        save_file(state, staging / WEIGHTS_FILE, metadata={"format": "pt"})
        manifest = ModelManifest(
            name=name, version=version, architecture=architecture,
            hyper_parameters=config_to_dict(config), feature_schema=arch.schema(config).to_dict(),
            tasks=arch.tasks(config), task_weights=arch.task_weights(config),
            weights_sha256=sha256_file(staging / WEIGHTS_FILE), metrics=json_ready(metrics),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_manifest(version_dir: Path) -> ModelManifest:
    manifest_path = version_dir / MANIFEST_FILE
    try:
        data = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{manifest_path}: cannot read JSON ({error})") from error
    return ModelManifest.from_dict(data, manifest_path)


def load_artifact(path: Path | str) -> LoadedArtifact:
    """Load and verify a stored model; `path` is a version folder or a model folder (latest version)."""
    version_dir = resolve_version(path)
    manifest = read_manifest(version_dir)
    manifest_path = version_dir / MANIFEST_FILE
    weights_path = _verified_weights_path(version_dir, manifest)
    try:
        arch = get_architecture(manifest.architecture)
    except KeyError as error:
        raise ArtifactError(f"{manifest_path}: field 'architecture': {error.args[0]}") from None
    try:
        config = arch.config_from_dict(manifest.hyper_parameters)
    except (TypeError, ValueError) as error:
        raise ArtifactError(f"{manifest_path}: field 'hyper_parameters': {error}") from error
    schema = _verified_schema(manifest, arch, config, manifest_path)
    if list(manifest.tasks) != arch.tasks(config):
        raise ArtifactError(f"{manifest_path}: field 'tasks' is {manifest.tasks}, expected {arch.tasks(config)}")
    model = arch.build(config)
    _load_weights(model, weights_path)
    return LoadedArtifact(manifest=manifest, model=model.eval(), schema=schema, path=version_dir)


def _verified_weights_path(version_dir: Path, manifest: ModelManifest) -> Path:
    if Path(manifest.weights_file).name != manifest.weights_file:
        raise ArtifactError(f"{version_dir / MANIFEST_FILE}: field 'weights_file' must be a plain file name, "
                            f"got {manifest.weights_file!r}")
    weights_path = version_dir / manifest.weights_file
    if not weights_path.is_file():
        raise ArtifactError(f"{weights_path}: weights file is missing")
    actual = sha256_file(weights_path)
    if actual != manifest.weights_sha256:
        raise ArtifactError(
            f"{weights_path}: sha256 is {actual}, expected {manifest.weights_sha256} (field 'weights_sha256')"
        )
    return weights_path


def _verified_schema(manifest: ModelManifest, arch: Architecture, config: Any, manifest_path: Path) -> FeatureSchema:
    try:
        stored = FeatureSchema.from_dict(manifest.feature_schema)
    except (TypeError, ValueError) as error:
        raise ArtifactError(f"{manifest_path}: field 'feature_schema' is invalid: {error}") from error
    expected = arch.schema(config)
    if stored == expected:
        return stored
    stored_by_name = {spec.name: spec for spec in stored.features}
    for index, spec in enumerate(expected.features):
        found = stored_by_name.get(spec.name)
        if found != spec:
            raise ArtifactError(
                f"{manifest_path}: field 'feature_schema': feature {spec.name!r} is "
                f"{found.to_dict() if found else 'missing'}, expected {spec.to_dict()} "
                f"(architecture {arch.name!r} with the stored hyper_parameters)"
            )
    extra = sorted(set(stored.names) - set(expected.names))
    raise ArtifactError(
        f"{manifest_path}: field 'feature_schema': features {list(stored.names)} (unexpected {extra}), "
        f"expected exactly {list(expected.names)} in that order"
    )


def _load_weights(model: nn.Module, weights_path: Path) -> None:
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError) as error:
        raise ArtifactError(f"{weights_path}: not a readable safetensors file ({error})") from error
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    found = {key: tuple(tensor.shape) for key, tensor in state.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = [f"{key}: {found[key]} (expected {expected[key]})"
                   for key in sorted(set(expected) & set(found)) if expected[key] != found[key]]
    if missing or unexpected or wrong_shape:
        raise ArtifactError(
            f"{weights_path}: tensors do not match the architecture: missing {missing}, "
            f"unexpected {unexpected}, wrong shapes {wrong_shape}"
        )
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
