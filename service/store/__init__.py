"""Artifact store: versioned, checksummed model folders (model.json + weights.safetensors)."""

from service.store.artifact import (
    ArtifactError,
    LoadedArtifact,
    ModelManifest,
    load_artifact,
    next_version,
    resolve_version,
    save_artifact,
)

__all__ = [
    "ArtifactError", "LoadedArtifact", "ModelManifest", "load_artifact", "next_version", "resolve_version",
    "save_artifact",
]
