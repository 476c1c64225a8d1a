"""Artifact store: one format for every model (model.json + program.json + weights.safetensors), never pickle.

The manifest and the store's versions are torch-free; loading and packaging (which need torch) are imported on
first use, so whatever only reads names, versions or the manifest never imports torch (service/store/versions.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.lazy_names import lazy_names
from service.store.manifest import ArtifactError, ModelManifest
from service.store.versions import next_version, resolve_version

if TYPE_CHECKING:
    from service.store.artifact import LoadedArtifact, load_artifact
    from service.store.packaging import PackageError, package

_LAZY = {"LoadedArtifact": "service.store.artifact", "load_artifact": "service.store.artifact",
         "PackageError": "service.store.packaging", "package": "service.store.packaging"}

__all__ = [
    "ArtifactError", "LoadedArtifact", "ModelManifest", "PackageError", "load_artifact", "next_version", "package",
    "resolve_version",
]

__getattr__ = lazy_names(__name__, _LAZY)
