import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from service.models import ARCHITECTURES
from service.store import ArtifactError, load_artifact, next_version, package, resolve_version
from service.store.artifact import sha256_file
from service.store.manifest import MANIFEST_FILE, PROGRAM_FILE, WEIGHTS_FILE
from service.store.packaging import builtin_source
from tests.models.small_configs import small_config
from tests.tiling import tile_user_features

METRICS = {"holdout_auc": {"click": 0.8}}


def _save(store: Path, architecture: str = "mmoe", version: str = "v1", seed: int = 0) -> tuple[Path, torch.nn.Module]:
    config = small_config(architecture)
    torch.manual_seed(seed)
    model = ARCHITECTURES[architecture].build(config).eval()
    schema = config.schema()
    loaded = package(
        model, schema.example_batch(5, torch.Generator().manual_seed(seed)), schema, tasks=list(config.tasks),
        task_weights=config.weights_by_task(), store=store, name="ranker", version=version, metrics=METRICS,
        source=builtin_source(architecture, config.to_dict()),
    )
    return loaded.path, model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    return _save(tmp_path_factory.mktemp("store"))


@pytest.fixture
def version_dir(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> Path:
    """A private copy of the saved artifact, free to corrupt."""
    copy = tmp_path / "ranker" / "v1"
    shutil.copytree(saved[0], copy)
    return copy


def _edit_manifest(version_dir: Path, edit) -> None:
    path = version_dir / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("architecture", ["mmoe", "dcn"])
def test_reloaded_artifact_scores_like_the_eager_model_at_any_batch(tmp_path: Path, architecture: str) -> None:
    version_dir, model = _save(tmp_path, architecture)
    loaded = load_artifact(version_dir)
    assert not loaded.model.training
    for n in (1, 9, 300):
        batch = tile_user_features(loaded.schema, loaded.schema.example_batch(n, torch.Generator().manual_seed(n)), n)
        with torch.no_grad():
            before, after = model(batch), loaded.model(batch)
        assert set(after) == set(before)
        assert all(torch.allclose(before[task], after[task], atol=1e-6, rtol=0) for task in before)
    assert loaded.manifest.architecture == architecture and loaded.manifest.metrics == METRICS


def test_the_service_never_needs_model_code_to_load(saved: tuple[Path, torch.nn.Module]) -> None:
    loaded = load_artifact(saved[0])
    modules = {type(module).__module__ for module in loaded.model.modules()}
    assert not any(name.startswith("service.models") for name in modules), modules


def test_manifest_records_every_checksum_the_schema_tasks_and_provenance(version_dir: Path) -> None:
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == 2
    assert manifest["files"] == {name: sha256_file(version_dir / name) for name in (PROGRAM_FILE, WEIGHTS_FILE)}
    assert manifest["tasks"] == ["click", "long_view", "like"]
    assert set(manifest["task_weights"]) == set(manifest["tasks"])
    assert manifest["feature_schema"]["features"][0]["name"] == "user_id"
    assert manifest["user_features"][0] == "user_id" and "item_id" not in manifest["user_features"]
    assert manifest["source"]["kind"] == "builtin" and manifest["source"]["architecture"] == "mmoe"
    assert manifest["created_at"].endswith("+00:00")
    assert sorted(p.name for p in version_dir.iterdir()) == [MANIFEST_FILE, PROGRAM_FILE, WEIGHTS_FILE]


@pytest.mark.parametrize("file_name", [WEIGHTS_FILE, PROGRAM_FILE])
def test_corrupted_files_are_refused_by_checksum(version_dir: Path, file_name: str) -> None:
    target = version_dir / file_name
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{file_name}: sha256"):
        load_artifact(version_dir)


def test_missing_files_are_refused(version_dir: Path) -> None:
    (version_dir / PROGRAM_FILE).unlink()
    with pytest.raises(ArtifactError, match="program.json: file is missing"):
        load_artifact(version_dir)


def test_user_features_that_disagree_with_the_schema_are_refused(version_dir: Path) -> None:
    _edit_manifest(version_dir, lambda m: m["user_features"].append("item_id"))
    with pytest.raises(ArtifactError, match="user_features"):
        load_artifact(version_dir)


def test_a_schema_that_no_longer_fits_the_program_is_refused(version_dir: Path) -> None:
    def widen_cross_dense(manifest: dict) -> None:
        for feature in manifest["feature_schema"]["features"]:
            if feature["name"] == "cross_dense":
                feature["dim"] += 1

    _edit_manifest(version_dir, widen_cross_dense)
    with pytest.raises(ArtifactError, match="program.json"):
        load_artifact(version_dir)


def test_weights_with_a_matching_checksum_but_missing_tensors_are_refused(version_dir: Path) -> None:
    weights = version_dir / WEIGHTS_FILE
    state = load_file(weights)
    state.pop("state_dict/model.towers.towers.like.1.bias")
    save_file(state, weights)
    _edit_manifest(version_dir, lambda m: m["files"].update({WEIGHTS_FILE: sha256_file(weights)}))
    with pytest.raises(ArtifactError, match="lacks tensors.*towers.like.1.bias"):
        load_artifact(version_dir)


def test_unsupported_format_version_and_broken_json_are_refused(version_dir: Path) -> None:
    _edit_manifest(version_dir, lambda m: m.update(format_version=3))
    with pytest.raises(ArtifactError, match="format_version is 3"):
        load_artifact(version_dir)
    _edit_manifest(version_dir, lambda m: m.update(format_version=1))
    with pytest.raises(ArtifactError, match="ranker convert"):
        load_artifact(version_dir)
    (version_dir / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="cannot read JSON"):
        load_artifact(version_dir)


def test_model_folder_resolves_to_the_latest_version_in_natural_order(
    saved: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    for version in ("v2", "v10", "v9"):
        shutil.copytree(saved[0], tmp_path / "ranker" / version)
        _edit_manifest(tmp_path / "ranker" / version, lambda m, version=version: m.update(version=version))
    (tmp_path / "ranker" / "v11-incomplete").mkdir()  # no model.json: not a version
    assert resolve_version(tmp_path / "ranker").name == "v10"
    assert resolve_version(tmp_path / "ranker" / "v2").name == "v2"
    assert load_artifact(tmp_path / "ranker").manifest.version == "v10"
    assert next_version(tmp_path, "ranker") == "v11"
    assert next_version(tmp_path, "new-model") == "v1"


def test_existing_versions_are_never_overwritten(saved: tuple[Path, torch.nn.Module]) -> None:
    with pytest.raises(ArtifactError, match="already exists"):
        _save(saved[0].parent.parent, seed=1)


def test_unsafe_names_and_missing_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="version"):
        _save(tmp_path, version="../escape")
    with pytest.raises(ArtifactError, match="version"):
        _save(tmp_path, version="v" * 300)
    with pytest.raises(ArtifactError, match="no such"):
        load_artifact(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no version folder"):
        load_artifact(tmp_path / "empty")
