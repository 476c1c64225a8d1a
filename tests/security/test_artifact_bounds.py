"""A broken or oversized artifact is refused with one ArtifactError line before anything large is parsed or
allocated: JSON depth and size, declared feature widths, tensor sizes, literal allocations (issue 21 item 1)."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
import torch

from service.features.schema import MAX_FEATURE_WIDTH, FeatureSchema
from service.store import ArtifactError, load_artifact
from service.store.bounded_json import JsonBoundError, json_depth, loads_bounded
from service.store.manifest import MANIFEST_FILE, PROGRAM_FILE
from tests.conftest import SMALL_MODEL_NAME
from tests.security.hostile_artifacts import (
    edit_manifest,
    edit_program,
    edit_weights,
    node_named,
    plant,
    plant_computed_allocation,
    write_file,
)

DEEP = 100_000
MEMORY_SLACK_BYTES = 256 << 20  # a refusal may touch a few MB; the attacks below would need gigabytes


@pytest.fixture
def version_dir(store: Path, tmp_path: Path) -> Path:
    return plant(store / SMALL_MODEL_NAME / "v1", tmp_path / SMALL_MODEL_NAME / "v1")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@pytest.mark.parametrize("name", [PROGRAM_FILE, MANIFEST_FILE])
def test_json_nested_100000_deep_is_refused_without_recursing(version_dir: Path, name: str) -> None:
    write_file(version_dir, name, b"[" * DEEP + b"]" * DEEP)
    with pytest.raises(ArtifactError, match="nests deeper than"):
        load_artifact(version_dir)


@pytest.mark.parametrize("name", [PROGRAM_FILE, MANIFEST_FILE])
def test_non_finite_json_literals_are_refused(version_dir: Path, name: str) -> None:
    data = (version_dir / name).read_bytes()
    write_file(version_dir, name, data.replace(b"{", b'{"planted": NaN, ', 1))
    with pytest.raises(ArtifactError, match="NaN is not a finite number"):
        load_artifact(version_dir)


def test_bracket_depth_ignores_brackets_inside_strings() -> None:
    assert json_depth(json.dumps({"a": ["[[[[\\\"", {"b": [[]]}]}).encode()) == 5
    assert loads_bounded(b'{"x": "[[[[[[["}', max_bytes=100, max_depth=1, what="t") == {"x": "[[[[[[["}
    with pytest.raises(JsonBoundError, match="bytes, more than"):
        loads_bounded(b"[1, 2, 3]", max_bytes=4, max_depth=4, what="t")


@pytest.mark.parametrize("dim", [2**40, 400_000_000])
def test_a_huge_feature_dim_is_refused_before_any_allocation(version_dir: Path, dim: int) -> None:
    def widen(manifest: dict) -> None:
        next(f for f in manifest["feature_schema"]["features"] if f["kind"] == "dense")["dim"] = dim

    edit_manifest(version_dir, widen)
    before = _peak_rss_bytes()
    with pytest.raises(ArtifactError, match=rf"'feature_schema' is invalid: feature '\w+': dim must be an integer in "
                                            rf"\[0, {MAX_FEATURE_WIDTH}\], got {dim}"):
        load_artifact(version_dir)
    assert _peak_rss_bytes() - before < MEMORY_SLACK_BYTES  # 400M x 4 rows of float32 would be 6.4 GB


@pytest.mark.parametrize(("field", "value", "message"), [
    ("dim", "6", "dim must be an integer"),
    ("dim", True, "dim must be an integer"),
    ("dim", 6.5, "dim must be an integer"),
    ("vocab_size", -1, "vocab_size must be an integer in"),
    ("max_len", 10**30, "max_len must be an integer in"),
    ("name", ["a"], "feature name must be a string"),
    ("name", "x" * 1000, "feature name must be a string of 1 to 128"),
    ("side", "admin", "side is 'admin', expected one of"),
    ("kind", {"k": 1}, "kind is .*expected one of"),
])
def test_feature_spec_fields_are_type_checked(version_dir: Path, field: str, value: object, message: str) -> None:
    edit_manifest(version_dir, lambda manifest: manifest["feature_schema"]["features"][3].update({field: value}))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(version_dir)


def test_too_many_features_are_refused() -> None:
    features = [{"name": f"f{i}", "side": "item", "kind": "sparse_id", "vocab_size": 2} for i in range(5000)]
    with pytest.raises(ValueError, match="5000 features, more than"):
        FeatureSchema.from_dict({"features": features})


def test_widths_adding_up_past_the_bound_are_refused() -> None:
    features = [{"name": f"f{i}", "side": "item", "kind": "dense", "dim": MAX_FEATURE_WIDTH} for i in range(100)]
    with pytest.raises(ValueError, match="add up to"):
        FeatureSchema.from_dict({"features": features})


def test_a_huge_declared_tensor_size_is_refused(version_dir: Path) -> None:
    def declare(program: dict) -> None:
        program["graph_module"]["graph"]["tensor_values"]["relu"]["sizes"][1] = {"as_int": 2**40}

    edit_program(version_dir, declare)
    with pytest.raises(ArtifactError, match=r"tensor_values\['relu'\]"):
        load_artifact(version_dir)


def test_a_huge_literal_allocation_is_refused_before_running(version_dir: Path) -> None:
    def allocate(program: dict) -> None:
        node = node_named(program, "full_like")
        node["target"] = "torch.ops.aten.full.default"
        node["inputs"] = [{"name": "size", "arg": {"as_ints": [1 << 20, 1 << 20]}, "kind": 1},
                          {"name": "fill_value", "arg": {"as_int": 300}, "kind": 1}]

    edit_program(version_dir, allocate)
    before = _peak_rss_bytes()
    with pytest.raises(ArtifactError, match=r"node 'full_like' \(full\) allocates 1.1e\+12 elements"):
        load_artifact(version_dir)
    assert _peak_rss_bytes() - before < MEMORY_SLACK_BYTES


def test_a_huge_literal_in_size_arithmetic_is_refused(version_dir: Path) -> None:
    def scale(program: dict) -> None:
        node = node_named(program, "relu")
        node["target"] = "_operator.mul"
        node["inputs"] = [{"name": "a", "arg": {"as_int": 2}, "kind": 1},
                          {"name": "b", "arg": {"as_int": 2**50}, "kind": 1}]

    edit_program(version_dir, scale)
    with pytest.raises(ArtifactError, match="size literal"):
        load_artifact(version_dir)


def test_a_range_constraint_with_a_huge_unbacked_index_is_refused(version_dir: Path) -> None:
    """torch counts up to the highest unbacked symbol index on load: u999999999999 would loop ~10^12 times."""
    edit_program(version_dir, lambda p: p["range_constraints"].update({"u999999999999": {"min_val": 0,
                                                                                         "max_val": 1}}))
    with pytest.raises(ArtifactError, match="symbol name 'u999999999999'"):
        load_artifact(version_dir)


def test_weights_whose_shapes_disagree_with_the_program_are_refused(version_dir: Path) -> None:
    def grow(tensors: dict[str, torch.Tensor]) -> None:
        tensors["state_dict/model.user_id.weight"] = torch.zeros(1_000, 8)

    edit_weights(version_dir, grow)
    with pytest.raises(ArtifactError, match=r"parameter 'model.user_id.weight' is declared with sizes \[101, 8\].*"
                                            r"holds \[1000, 8\]"):
        load_artifact(version_dir)


def test_weights_whose_dtype_disagrees_with_the_program_are_refused(version_dir: Path) -> None:
    edit_weights(version_dir, lambda t: t.update({"state_dict/model.user_id.weight":
                                                  t["state_dict/model.user_id.weight"].double()}))
    with pytest.raises(ArtifactError, match="torch.float64"):
        load_artifact(version_dir)


def test_an_oversized_weights_file_is_refused_before_hashing(version_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from service.store import artifact

    monkeypatch.setitem(artifact.MAX_FILE_BYTES, "weights.safetensors", 1000)
    with pytest.raises(ArtifactError, match="bytes, more than the 1000 allowed"):
        load_artifact(version_dir)


def test_an_allocation_sized_at_run_time_is_refused_before_it_happens(version_dir: Path) -> None:
    """full([batch * 2**20, 2**12]): every literal is small, the shape is computed; at the example's 4 rows it
    would be 16 G elements (64 GB). The load-time call predicts each operator's output on the meta device."""
    edit_program(version_dir, lambda program: plant_computed_allocation(program, 1 << 20, 1 << 12))
    before = _peak_rss_bytes()
    with pytest.raises(ArtifactError, match=r"AllocationRefused: operator aten.full.default would produce a tensor "
                                            r"of shape \[4194304, 4096\]"):
        load_artifact(version_dir)
    assert _peak_rss_bytes() - before < MEMORY_SLACK_BYTES


def test_the_allocation_guard_lets_a_legitimate_computed_allocation_run(version_dir: Path) -> None:
    """The same graph at a harmless size loads: the guard refuses sizes, not the construction."""
    edit_program(version_dir, lambda program: plant_computed_allocation(program, 2, 3))
    assert load_artifact(version_dir).manifest.version == "v1"


def test_an_allocation_growing_faster_than_the_candidates_is_refused(version_dir: Path) -> None:
    """full([batch * batch * 16, 8]) is 2,048 elements at the example's 4 rows, far under any bound, and 128 G at
    100,000 candidates: the example tiled 1, 2 and 3 times shows its size is not linear in the rows."""
    edit_program(version_dir, lambda program: plant_computed_allocation(program, 16, 8, squared=True))
    with pytest.raises(ArtifactError, match=r"operator aten.full.default produces 2048, 8192, 18432 elements for 1, "
                                            r"2, 3 copies of the example: its size grows faster than linearly"):
        load_artifact(version_dir)
