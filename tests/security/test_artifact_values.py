"""Every manifest field is type-checked, every weight is finite and the program's example scores are finite,
so a loaded model never serves NaN on the artifact's say-so (issue 21 items 1 and 2, artifact half)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.store import ArtifactError, load_artifact
from tests.conftest import SMALL_MODEL_NAME
from tests.security.hostile_artifacts import (
    edit_manifest,
    edit_program,
    edit_weights,
    node_named,
    plant,
    set_manifest_text,
)

WEIGHT = "state_dict/model.towers.towers.click.1.weight"


@pytest.fixture
def version_dir(store: Path, tmp_path: Path) -> Path:
    return plant(store / SMALL_MODEL_NAME / "v1", tmp_path / SMALL_MODEL_NAME / "v1")


@pytest.mark.parametrize("weight", ['"heavy"', "null", "true", "[1.0]", "{}", "1e999", "-1e999"])
def test_a_task_weight_that_is_not_a_finite_number_is_refused(version_dir: Path, weight: str) -> None:
    set_manifest_text(version_dir, "task_weights", "click", weight)
    with pytest.raises(ArtifactError, match="'task_weights' gives task 'click' the weight .* expected a finite number"):
        load_artifact(version_dir)


@pytest.mark.parametrize("weight", ["NaN", "Infinity", "-Infinity"])
def test_a_nan_or_infinity_task_weight_is_refused(version_dir: Path, weight: str) -> None:
    set_manifest_text(version_dir, "task_weights", "click", weight)
    with pytest.raises(ArtifactError, match="Infinity|NaN is not a finite number"):
        load_artifact(version_dir)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("name", "../../etc", "field 'name' is '../../etc', expected one path component"),
    ("version", "v1/../v2", "field 'version'"),
    ("tasks", [], "field 'tasks' must be a list of distinct names"),
    ("tasks", ["click", "click", "like"], "field 'tasks' must be a list of distinct names"),
    ("tasks", ["click", 3, "like"], "field 'tasks' must be a list of distinct names"),
    ("user_features", "user_id", "field 'user_features' must be a list"),
    ("source", {"architecture": "mmoe"}, "field 'source' needs a string 'kind'"),
    ("outputs", [], "field 'outputs' must be a dict"),
    ("metrics", "good", "field 'metrics' must be a dict"),
    ("created_at", 20260101, "field 'created_at' must be a str"),
    ("torch_version", None, "field 'torch_version' must be a str"),
])
def test_manifest_fields_are_type_checked(version_dir: Path, field: str, value: object, message: str) -> None:
    edit_manifest(version_dir, lambda manifest: manifest.update({field: value}))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(version_dir)


def test_file_digests_must_be_sha256_hex(version_dir: Path) -> None:
    edit_manifest(version_dir, lambda manifest: manifest["files"].update({"weights.safetensors": "not a digest"}),
                  vouch=False)
    with pytest.raises(ArtifactError, match="field 'files' must map"):
        load_artifact(version_dir)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_weight_that_is_not_finite_is_refused_naming_the_tensor(version_dir: Path, bad: float) -> None:
    def poison(tensors: dict[str, torch.Tensor]) -> None:
        tensors[WEIGHT][0, 3] = bad

    edit_weights(version_dir, poison)
    with pytest.raises(ArtifactError, match=f"tensor '{WEIGHT}' holds NaN or infinite values"):
        load_artifact(version_dir)


def test_a_program_whose_example_scores_are_not_finite_is_refused(version_dir: Path) -> None:
    """Finite weights, but the graph divides a task's logits by zero: scores are +-inf or NaN."""
    def divide_by_zero(program: dict) -> None:
        node = node_named(program, "sigmoid")
        node["target"] = "torch.ops.aten.div.Scalar"
        node["inputs"].append({"name": "other", "arg": {"as_float": 0.0}, "kind": 1})

    edit_program(version_dir, divide_by_zero)
    with pytest.raises(ArtifactError, match=r"scores for tasks \['click'\] are not finite"):
        load_artifact(version_dir)


def test_every_failure_is_one_line(version_dir: Path) -> None:
    """A torch error deep in deserialization carries a traceback in its message; the ArtifactError keeps one line."""
    def dangle(program: dict) -> None:
        node_named(program, "relu")["inputs"][0]["arg"] = {"as_tensor": {"name": "no_such_value"}}

    edit_program(version_dir, dangle)
    with pytest.raises(ArtifactError) as refused:
        load_artifact(version_dir)
    assert "\n" not in str(refused.value) and "Traceback" not in str(refused.value)
