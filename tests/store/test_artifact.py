import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from service.models.registry import ARCHITECTURES, SMALL_OVERRIDES
from service.store.artifact import (
    MANIFEST_FILE, WEIGHTS_FILE, ArtifactError, load_artifact, next_version, resolve_version, save_artifact,
    sha256_file,
)

METRICS = {"holdout_auc": {"click": 0.8}}


def _save(store: Path, architecture: str = "mmoe", version: str = "v1", seed: int = 0) -> tuple[Path, torch.nn.Module]:
    arch = ARCHITECTURES[architecture]
    config = arch.with_overrides(arch.default_config(), SMALL_OVERRIDES[architecture])
    torch.manual_seed(seed)
    model = arch.build(config).eval()
    return save_artifact(store, "ranker", version, architecture, config, model, METRICS), model


def _edit_manifest(version_dir: Path, edit) -> None:
    path = version_dir / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("architecture", ["mmoe", "dcn"])
def test_reloaded_artifact_scores_identically(tmp_path: Path, architecture: str) -> None:
    version_dir, model = _save(tmp_path, architecture)
    loaded = load_artifact(version_dir)
    assert not loaded.model.training
    batch = loaded.schema.tile_user_features(loaded.schema.example_batch(9, torch.Generator().manual_seed(1)), 9)
    with torch.no_grad():
        before, after = model(batch), loaded.model(batch)
    assert all(torch.equal(before[task], after[task]) for task in before)
    assert loaded.manifest.architecture == architecture and loaded.manifest.metrics == METRICS


def test_manifest_records_checksum_schema_tasks_and_weights(tmp_path: Path) -> None:
    version_dir, _ = _save(tmp_path)
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == 1 and manifest["weights_file"] == WEIGHTS_FILE
    assert manifest["weights_sha256"] == sha256_file(version_dir / WEIGHTS_FILE)
    assert manifest["tasks"] == ["click", "long_view", "like"]
    assert set(manifest["task_weights"]) == set(manifest["tasks"])
    assert manifest["feature_schema"]["features"][0]["name"] == "user_id"
    assert manifest["created_at"].endswith("+00:00")
    assert sorted(p.name for p in version_dir.iterdir()) == [MANIFEST_FILE, WEIGHTS_FILE]


def test_corrupted_weights_are_refused_by_checksum(tmp_path: Path) -> None:
    version_dir, _ = _save(tmp_path)
    weights = version_dir / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(version_dir)


def test_missing_weights_are_refused(tmp_path: Path) -> None:
    version_dir, _ = _save(tmp_path)
    (version_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match="weights file is missing"):
        load_artifact(version_dir)


def test_schema_in_manifest_that_differs_from_the_architecture_is_refused(tmp_path: Path) -> None:
    version_dir, _ = _save(tmp_path)

    def widen_cross_dense(manifest: dict) -> None:
        for feature in manifest["feature_schema"]["features"]:
            if feature["name"] == "cross_dense":
                feature["dim"] += 1

    _edit_manifest(version_dir, widen_cross_dense)
    with pytest.raises(ArtifactError, match="feature_schema.*cross_dense"):
        load_artifact(version_dir)


def test_reordered_schema_is_refused(tmp_path: Path) -> None:
    version_dir, _ = _save(tmp_path, "dcn")
    _edit_manifest(version_dir, lambda m: m["feature_schema"]["features"].reverse())
    with pytest.raises(ArtifactError, match="in that order"):
        load_artifact(version_dir)


def test_hyper_parameters_that_change_weight_shapes_are_refused(tmp_path: Path) -> None:
    version_dir, _ = _save(tmp_path)
    _edit_manifest(version_dir, lambda m: m["hyper_parameters"].update(expert_dims=[64, 16]))
    with pytest.raises(ArtifactError, match="wrong shapes.*mmoe.experts.0.0.weight"):
        load_artifact(version_dir)


def test_hyper_parameters_that_change_the_schema_are_refused(tmp_path: Path) -> None:
    version_dir, _ = _save(tmp_path)
    _edit_manifest(version_dir, lambda m: m["hyper_parameters"].update(item_vocab=999))
    with pytest.raises(ArtifactError, match="feature_schema.*'vocab_size': 999"):
        load_artifact(version_dir)


def test_unknown_hyper_parameters_and_architectures_are_refused(tmp_path: Path) -> None:
    version_dir, _ = _save(tmp_path)
    _edit_manifest(version_dir, lambda m: m["hyper_parameters"].update(dropout=0.1))
    with pytest.raises(ArtifactError, match="hyper_parameters.*dropout"):
        load_artifact(version_dir)
    _edit_manifest(version_dir, lambda m: m.update(architecture="transformer"))
    with pytest.raises(ArtifactError, match="architecture"):
        load_artifact(version_dir)


def test_weights_with_a_matching_checksum_but_wrong_tensors_are_refused(tmp_path: Path) -> None:
    version_dir, _ = _save(tmp_path)
    weights = version_dir / WEIGHTS_FILE
    state = load_file(weights)
    state.pop("towers.towers.like.1.bias")
    save_file(state, weights)
    _edit_manifest(version_dir, lambda m: m.update(weights_sha256=sha256_file(weights)))
    with pytest.raises(ArtifactError, match="missing \\['towers.towers.like.1.bias'\\]"):
        load_artifact(version_dir)


def test_unsupported_format_version_and_broken_json_are_refused(tmp_path: Path) -> None:
    version_dir, _ = _save(tmp_path)
    _edit_manifest(version_dir, lambda m: m.update(format_version=2))
    with pytest.raises(ArtifactError, match="format_version"):
        load_artifact(version_dir)
    (version_dir / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="cannot read JSON"):
        load_artifact(version_dir)


def test_model_folder_resolves_to_the_latest_version_in_natural_order(tmp_path: Path) -> None:
    for version in ("v2", "v10", "v9"):
        _save(tmp_path, version=version)
    (tmp_path / "ranker" / "v11-incomplete").mkdir()  # no model.json: not a version
    assert resolve_version(tmp_path / "ranker").name == "v10"
    assert resolve_version(tmp_path / "ranker" / "v2").name == "v2"
    assert load_artifact(tmp_path / "ranker").manifest.version == "v10"
    assert next_version(tmp_path, "ranker") == "v11"
    assert next_version(tmp_path, "new-model") == "v1"


def test_existing_versions_are_never_overwritten(tmp_path: Path) -> None:
    _save(tmp_path)
    with pytest.raises(ArtifactError, match="already exists"):
        _save(tmp_path, seed=1)


def test_unsafe_names_and_missing_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="version"):
        _save(tmp_path, version="../escape")
    with pytest.raises(ArtifactError, match="no such"):
        load_artifact(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no version folder"):
        load_artifact(tmp_path / "empty")
