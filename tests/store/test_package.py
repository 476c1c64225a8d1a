"""package(): any trained ranker becomes an artifact that scores exactly like the user's eager model."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from service.features.schema import FeatureSchema, FeatureSpec
from service.store import PackageError, load_artifact, package
from tests.store.my_ranker import build
from tests.tiling import tile_user_features

SCHEMA = FeatureSchema((
    FeatureSpec("user_dense", "user", "dense", dim=6),
    FeatureSpec("user_id", "user", "sparse_id", vocab_size=30),
    FeatureSpec("item_id", "item", "sparse_id", vocab_size=50),
    FeatureSpec("item_dense", "item", "dense", dim=3),
))


class TwoHeads(nn.Module):
    """A small ranker whose output structure is chosen per test: tensor columns, tuple or dict, logits."""

    def __init__(self, structure: str) -> None:
        super().__init__()
        self.structure = structure
        self.user_table, self.item_table = nn.Embedding(31, 4), nn.Embedding(51, 4)
        self.mlp = nn.Sequential(nn.Linear(6 + 4 + 4 + 3, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, features: dict[str, torch.Tensor]):
        x = torch.cat([features["user_dense"], self.user_table(features["user_id"]),
                       self.item_table(features["item_id"]), features["item_dense"]], dim=1)
        logits = self.mlp(x)  # [N, 2]
        if self.structure == "tensor":
            return logits
        if self.structure == "tuple":
            return logits[:, 0], logits[:, 1:2]
        return {"ctr": logits[:, 0], "cvr": logits[:, 1]}


def _tiled(n: int, seed: int) -> dict[str, torch.Tensor]:
    return tile_user_features(SCHEMA, SCHEMA.example_batch(n, torch.Generator().manual_seed(seed)), n)


@pytest.mark.parametrize(("structure", "tasks"), [
    ("tensor", ["click", "convert"]),
    ("tuple", ["click", "convert"]),
    ("dict", {"click": "ctr", "convert": "cvr"}),
])
def test_every_output_structure_serves_sigmoid_scores_per_task(tmp_path: Path, structure: str, tasks) -> None:
    torch.manual_seed(3)
    model = TwoHeads(structure).eval()
    loaded = package(model, SCHEMA.example_batch(5), SCHEMA, tasks=tasks, scores="logit", store=tmp_path, name="m")
    assert loaded.manifest.tasks == ["click", "convert"]
    assert loaded.manifest.outputs["structure"] == structure
    assert loaded.manifest.source == {"kind": "packaged", "model_class": f"{__name__}.TwoHeads"}
    for n in (1, 7, 1000):
        features = _tiled(n, seed=n)
        with torch.no_grad():
            logits = TwoHeads.forward(model, features)
            served = loaded.model(features)
        columns = logits if structure == "tensor" else torch.stack(
            [logits[0], logits[1][:, 0]] if structure == "tuple" else [logits["ctr"], logits["cvr"]], dim=1)
        assert served["click"].shape == (n,)
        assert torch.allclose(served["click"], torch.sigmoid(columns[:, 0]), atol=1e-6, rtol=0)
        assert torch.allclose(served["convert"], torch.sigmoid(columns[:, 1]), atol=1e-6, rtol=0)


def test_task_weights_default_to_one_and_versions_count_up(tmp_path: Path) -> None:
    model = TwoHeads("tensor").eval()
    first = package(model, SCHEMA.example_batch(4), SCHEMA, tasks=["a", "b"], scores="logit", store=tmp_path,
                    name="m")
    second = package(model, SCHEMA.example_batch(4), SCHEMA, tasks=["a", "b"], task_weights={"b": 0.25},
                     scores="logit", store=tmp_path, name="m")
    assert (first.manifest.version, second.manifest.version) == ("v1", "v2")
    assert first.manifest.task_weights == {"a": 1.0, "b": 1.0} and second.manifest.task_weights["b"] == 0.25


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tasks": ["only_one"]}, "2 score columns"),
    ({"tasks": {"click": "nope"}}, "must name one per column|not"),
    ({"tasks": ["a", "b"], "user_features": ["user_id"]}, "user_features"),
    ({"tasks": ["a", "b"], "task_weights": {"c": 1.0}}, "task_weights"),
    ({"tasks": ["a", "b"], "scores": "raw"}, "scores"),
    ({"tasks": ["a", "b"], "name": "../x"}, "model name"),
])
def test_bad_package_arguments_name_the_argument(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises((PackageError, ValueError), match=message):
        package(TwoHeads("tensor").eval(), SCHEMA.example_batch(4), SCHEMA, store=tmp_path, **kwargs)
    assert not (tmp_path / "m").exists()


def test_an_example_that_does_not_match_the_schema_names_the_feature(tmp_path: Path) -> None:
    example = SCHEMA.example_batch(4)
    with pytest.raises(PackageError, match="missing features \\['item_dense'\\]"):
        package(TwoHeads("tensor"), {k: v for k, v in example.items() if k != "item_dense"}, SCHEMA,
                tasks=["a", "b"], store=tmp_path)
    with pytest.raises(PackageError, match="example_features\\['item_id'\\] has dtype torch.float32"):
        package(TwoHeads("tensor"), {**example, "item_id": example["item_id"].float()}, SCHEMA,
                tasks=["a", "b"], store=tmp_path)
    with pytest.raises(PackageError, match="example_features\\['user_dense'\\] has shape \\(1, 5\\)"):
        package(TwoHeads("tensor"), {**example, "user_dense": torch.randn(1, 5)}, SCHEMA,
                tasks=["a", "b"], store=tmp_path)


def test_a_model_that_fixes_the_candidate_batch_is_refused_with_the_export_reason(tmp_path: Path) -> None:
    class FixedBatch(TwoHeads):
        def forward(self, features):
            return super().forward(features).reshape(8, 2)  # only works at N = 8

    with pytest.raises(PackageError, match="torch.export could not capture"):
        package(FixedBatch("tensor").eval(), SCHEMA.example_batch(4), SCHEMA, tasks=["a", "b"], store=tmp_path)
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "default"])
    assert not any(p.name.startswith("v") for p in (tmp_path / "default").glob("*"))


def test_the_user_file_packages_and_serves_like_its_eager_model(tmp_path: Path) -> None:
    model, example, schema, options = build(seed=1)
    loaded = package(model, example, schema, store=tmp_path, name="my_ranker", **options)
    manifest = json.loads((loaded.path / "model.json").read_text())
    assert manifest["source"]["model_class"] == "tests.store.my_ranker.Adapter"
    assert manifest["task_weights"] == {"click": 1.0, "like": 0.5}
    reloaded = load_artifact(tmp_path / "my_ranker")
    features = tile_user_features(schema, schema.example_batch(64, torch.Generator().manual_seed(9)), 64)
    with torch.no_grad():
        logits, served = model(features), reloaded.model(features)
    assert torch.allclose(served["like"], torch.sigmoid(logits[:, 1]), atol=1e-6, rtol=0)
