"""Where a model's versions live in a store: model_store/<name>/<version>/, each name and version one path
component; the latest version of a model folder (natural sort: v2 < v10) and the next one.

Apart from loading (artifact.py) and torch-free: the settings, the fleet config and `ranker config` resolve and
check names and versions without importing torch (a CLI command that never runs a model starts in a fraction of a
second; tests/store/test_versions.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from service.store.manifest import COMPONENT, MANIFEST_FILE, ArtifactError


def _natural_key(name: str) -> list[tuple[int, Any]]:
    """v2 < v10: digit runs compare as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part]


def check_component(kind: str, value: str) -> str:
    """A model name or version is one short path component (no traversal out of the store)."""
    if not isinstance(value, str) or not COMPONENT.match(value):
        raise ArtifactError(f"{kind} {value!r} must match {COMPONENT.pattern} (a single path component)")
    return value


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
