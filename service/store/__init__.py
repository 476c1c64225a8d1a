"""Artifact store: one format for every model (model.json + program.json + weights.safetensors), never pickle."""

from service.store.artifact import LoadedArtifact, load_artifact, next_version, resolve_version
from service.store.manifest import ArtifactError, ModelManifest
from service.store.package import PackageError, package

__all__ = [
    "ArtifactError", "LoadedArtifact", "ModelManifest", "PackageError", "load_artifact", "next_version", "package",
    "resolve_version",
]
