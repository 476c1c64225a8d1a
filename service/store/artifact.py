"""Model artifacts: model_store/<name>/<version>/{model.json, program.json, weights.safetensors}; never pickle.

One format for every model, built-in or packaged: the captured program (torch.export's JSON graph) and its
tensors. Loading verifies the manifest, the sha256 of every file, the feature schema, every weight (finite,
shaped as the program declares) and the program before anything runs, and never imports model code: the
service can serve a model whose Python source it has never seen. An attacker may write the store, so every
size is bounded before it is read or allocated. Any failure is one ArtifactError line naming the file or
field and what was expected, never another exception.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from service.features.schema import FeatureSchema
from service.store.allocation_guard import AllocationGuard, check_affine_growth, output_bound
from service.store.bounded_json import (
    MAX_JSON_DEPTH,
    MAX_MANIFEST_BYTES,
    MAX_PROGRAM_BYTES,
    JsonBoundError,
    loads_bounded,
)
from service.store.manifest import (
    ARTIFACT_FILES,
    MANIFEST_FILE,
    PROGRAM_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    ModelManifest,
)
from service.store.program import ProgramError, program_from_json, program_module
from service.store.versions import resolve_version

_HASH_CHUNK = 1 << 20
_FINITE_CHUNK = 1 << 22  # elements per finiteness check of a weight
EXAMPLE_BATCH = 4  # rows of the example call that tells torch the program's input structure
GROWTH_COPIES = (1, 2, 3)  # the example call is also run tiled, to see that sizes grow linearly with rows
MAX_WEIGHTS_BYTES = 4 << 30  # weights.safetensors; the default model's is 26 MB
MAX_FILE_BYTES = {PROGRAM_FILE: MAX_PROGRAM_BYTES, WEIGHTS_FILE: MAX_WEIGHTS_BYTES}
MAX_MESSAGE_CHARS = 1000
# What a malformed artifact can make torch, sympy or the checks raise; each becomes one ArtifactError line.
_MALFORMED = (KeyError, TypeError, AttributeError, IndexError, ValueError, RecursionError, MemoryError,
              OverflowError, RuntimeError)


@dataclass(frozen=True)
class LoadedArtifact:
    manifest: ModelManifest
    model: nn.Module  # features dict (every feature at batch N) -> {task: score [N]}; eval mode
    schema: FeatureSchema
    path: Path  # the version folder

    @property
    def user_features(self) -> list[str]:
        return list(self.manifest.user_features)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_artifact(
    folder: Path, manifest_fields: dict[str, Any], program_json: bytes, tensors: dict[str, torch.Tensor]
) -> ModelManifest:
    """Write the three files into an empty `folder`; the manifest gets the sha256 of the other two.

    Every file gets the mode a plain open() gives (0644 under umask 022): safetensors writes its file 0600,
    which a server running as another user (the non-root image, a store mounted from the host) cannot read."""
    (folder / PROGRAM_FILE).write_bytes(program_json)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    files = {name: sha256_file(folder / name) for name in ARTIFACT_FILES}
    manifest = ModelManifest(**manifest_fields, files=files)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    file_mode = 0o666 & ~process_umask()
    for name in (*ARTIFACT_FILES, MANIFEST_FILE):
        os.chmod(folder / name, file_mode)
    return manifest


def process_umask() -> int:
    """This process's umask, read from /proc where it can be (setting it to read it back would change the mode
    of files other threads create meanwhile)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def staging_folder(target: Path) -> Path:
    """A fresh hidden folder beside `target`, renamed onto it once complete (atomic publish); it and any folder
    made above it get the mode a plain mkdir gives (0755 under umask 022), so any user may read the store."""
    staging = target.parent / f".staging-{target.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o777, parents=True)
    return staging


def read_manifest(version_dir: Path) -> ModelManifest:
    manifest_path = version_dir / MANIFEST_FILE
    try:
        data = loads_bounded(_read_bounded(manifest_path, MAX_MANIFEST_BYTES), max_bytes=MAX_MANIFEST_BYTES,
                             max_depth=MAX_JSON_DEPTH, what="the manifest")
    except (OSError, JsonBoundError) as error:
        raise ArtifactError(f"{manifest_path}: cannot read JSON ({error})") from error
    return ModelManifest.from_dict(data, manifest_path)


def load_artifact(path: Path | str) -> LoadedArtifact:
    """Load and verify a stored model; `path` is a version folder or a model folder (latest version).
    A file or folder this process may not read (a store packaged by another user with private modes) is an
    ArtifactError naming it, like any other unusable artifact: one line, never a traceback."""
    try:
        version_dir = resolve_version(path)
        return _load_verified(version_dir)
    except OSError as error:
        raise ArtifactError(f"{error.filename or path}: cannot be read ({error.strerror or error})") from error
    except ArtifactError as error:
        if "\n" not in str(error):
            raise
        raise ArtifactError(_first_line(str(error))) from error  # torch's messages can carry a traceback
    except _MALFORMED as error:  # a check missed a malformed part: still one line, never a traceback
        raise ArtifactError(f"{version_dir}: cannot be loaded ({type(error).__name__}: "
                            f"{_first_line(str(error))})") from error


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return (lines[0] if lines else "")[:MAX_MESSAGE_CHARS]


def _load_verified(version_dir: Path) -> LoadedArtifact:
    manifest = read_manifest(version_dir)
    manifest_path = version_dir / MANIFEST_FILE
    for name in ARTIFACT_FILES:
        _verify_checksum(version_dir / name, manifest.files[name], MAX_FILE_BYTES[name])
    schema = _verified_schema(manifest, manifest_path)
    tensors = _read_tensors(version_dir / WEIGHTS_FILE)
    generator = torch.Generator().manual_seed(0)
    example = {spec.name: spec.example(EXAMPLE_BATCH, generator) for spec in schema.features}  # all rows: VanI call
    try:
        program_json = _read_bounded(version_dir / PROGRAM_FILE, MAX_PROGRAM_BYTES)
        program = program_from_json(program_json, tensors, ((example,), {}))
        model = program_module(program)
    except ProgramError as error:
        raise ArtifactError(f"{version_dir / PROGRAM_FILE}: {error}") from error
    _check_program_runs(model, example, manifest, version_dir / PROGRAM_FILE, output_bound(tensors))
    return LoadedArtifact(manifest=manifest, model=model, schema=schema, path=version_dir)


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    """At most max_bytes + 1 bytes: enough to tell an oversized file without reading all of it."""
    with open(path, "rb") as handle:
        return handle.read(max_bytes + 1)


def _check_program_runs(model: nn.Module, example: dict[str, torch.Tensor], manifest: ModelManifest,
                        program_path: Path, max_elements: int) -> None:
    """The program takes the schema's features and returns one finite score per candidate for every task, no
    operator on the way producing more than `max_elements` elements or growing faster than the candidates."""
    outputs, runs = [], []
    try:
        for copies in GROWTH_COPIES:  # the example, then tiled: sizes read from data scale exactly with it
            guard = AllocationGuard(max_elements)
            with torch.no_grad(), guard:
                outputs.append(model({name: value.repeat(copies, *[1] * (value.dim() - 1))
                                      for name, value in example.items()}))
            runs.append(guard.outputs)
        check_affine_growth(runs)
    except Exception as error:  # any failure here means the program and the schema disagree
        raise ArtifactError(f"{program_path}: the program does not run on the feature schema's inputs "
                            f"({type(error).__name__}: {_first_line(str(error))})"[:600]) from error
    scores = outputs[0]
    if not isinstance(scores, dict) or list(scores) != list(manifest.tasks):
        found = list(scores) if isinstance(scores, dict) else type(scores).__name__
        raise ArtifactError(f"{program_path}: the program returns {found}, expected scores for tasks {manifest.tasks}")
    shapes = {task: tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
              for task, value in scores.items()}
    if any(shape != (EXAMPLE_BATCH,) for shape in shapes.values()):
        raise ArtifactError(f"{program_path}: score shapes {shapes}, expected ({EXAMPLE_BATCH},) per task")
    not_finite = [task for task, value in scores.items() if not torch.isfinite(value).all()]
    if not_finite:
        raise ArtifactError(f"{program_path}: the program's scores for tasks {not_finite} are not finite (NaN or "
                            f"infinite) on the feature schema's example inputs")


def _verify_checksum(path: Path, expected: str, max_bytes: int) -> None:
    if not path.is_file():
        raise ArtifactError(f"{path}: file is missing")
    size = path.stat().st_size
    if size > max_bytes:
        raise ArtifactError(f"{path}: file is {size} bytes, more than the {max_bytes} allowed")
    actual = sha256_file(path)
    if actual != expected:
        raise ArtifactError(f"{path}: sha256 is {actual}, expected {expected} (field 'files' of {MANIFEST_FILE})")


def _verified_schema(manifest: ModelManifest, manifest_path: Path) -> FeatureSchema:
    try:
        schema = FeatureSchema.from_dict(manifest.feature_schema)
    except (TypeError, ValueError) as error:
        raise ArtifactError(f"{manifest_path}: field 'feature_schema' is invalid: {error}") from error
    expected = [spec.name for spec in schema.user_features]
    if list(manifest.user_features) != expected:
        raise ArtifactError(f"{manifest_path}: field 'user_features' is {manifest.user_features}, expected the "
                            f"schema's user-side features {expected}")
    return schema


def _read_tensors(weights_path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ArtifactError(f"{weights_path}: not a readable safetensors file ({error})") from error
    for name, tensor in tensors.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not _all_finite(tensor):
            raise ArtifactError(f"{weights_path}: tensor {name!r} holds NaN or infinite values; weights must be "
                                "finite")
    return tensors


def _all_finite(tensor: torch.Tensor) -> bool:
    """Checked in chunks: the mask of a whole multi-GB table would cost a quarter of its size again."""
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(flat[start:start + _FINITE_CHUNK]).all())
               for start in range(0, flat.numel(), _FINITE_CHUNK))
