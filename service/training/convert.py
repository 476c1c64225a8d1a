"""Convert a format-1 artifact (architecture name + safetensors weights) to the one serving format.

Format 1 rebuilt the model from this project's code at load time; the service no longer imports model
code, so such an artifact is re-packaged once (`ranker convert PATH`): same weights, same name, version,
schema, tasks and metrics, now with the captured program beside them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from service.models import get_architecture
from service.store.bounded_json import MAX_JSON_DEPTH, MAX_MANIFEST_BYTES, JsonBoundError, loads_bounded
from service.store.manifest import MANIFEST_FILE, ArtifactError
from service.store.packaging import builtin_source, package

LEGACY_FORMAT = 1


def convert_legacy(version_dir: Path | str) -> Path:
    """Rewrite one format-1 version folder in place (atomically: the old folder is kept until the new is in)."""
    version_dir = Path(version_dir)
    try:
        manifest = loads_bounded((version_dir / MANIFEST_FILE).read_bytes(), max_bytes=MAX_MANIFEST_BYTES,
                                 max_depth=MAX_JSON_DEPTH, what="the manifest")
    except (OSError, JsonBoundError) as error:
        raise ArtifactError(f"{version_dir / MANIFEST_FILE}: cannot read JSON ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format_version") != LEGACY_FORMAT:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{version_dir}: format_version is {found!r}, "
                            f"only format {LEGACY_FORMAT} needs converting")
    arch = get_architecture(manifest["architecture"])
    config = arch.config_cls.from_dict(manifest["hyper_parameters"])
    model = arch.build(config)
    model.load_state_dict(load_file(version_dir / manifest["weights_file"]), strict=True)
    schema = config.schema()
    staging_store = version_dir.parent / f".convert-{os.getpid()}"
    shutil.rmtree(staging_store, ignore_errors=True)
    try:
        example = schema.example_batch(8, torch.Generator().manual_seed(0))
        converted = package(
            model.eval(), example, schema, tasks=manifest["tasks"], task_weights=manifest["task_weights"],
            store=staging_store, name=manifest["name"], version=manifest["version"],
            metrics=manifest.get("metrics", {}),
            source=builtin_source(manifest["architecture"], config.to_dict()),
        )
        retired = version_dir.parent / f".format1-{version_dir.name}-{os.getpid()}"
        os.rename(version_dir, retired)
        os.rename(converted.path, version_dir)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging_store, ignore_errors=True)
    return version_dir
