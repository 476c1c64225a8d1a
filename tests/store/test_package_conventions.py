"""Models in every input convention, packaged into the store and served from the stored program.

The engine's convention tests (tests/engine) run on the live nn.Module; here the same models go the
user's way: package() -> the store's JSON program -> load -> every variant built from the loaded program,
as the service does. Scores must equal the user's own eager model, and MaRI must still split the user part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from service.engine import Variant, reparameterize_all
from service.features.schema import FeatureSchema, FeatureSpec, Kind
from service.store import load_artifact, package
from tests.engine import test_flat_tensor_convention as flat
from tests.engine import test_positional_convention as positional
from tests.engine import torchrec_models

TOLERANCE = 1e-5
NS = (1, 7, 1000)


@dataclass(frozen=True)
class Convention:
    name: str
    model: nn.Module  # the user's adapter: features dict (schema encoding, every feature at batch N) -> scores [N]
    schema: FeatureSchema


class FlatColumns(nn.Module):
    """A DeepCTR-style model's adapter: schema features -> one flat float tensor in the model's column order."""

    def __init__(self, model: nn.Module, columns) -> None:
        super().__init__()
        self.model, self.columns = model, [(name, kind) for name, _, kind, _ in columns]

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        parts = [features[name].unsqueeze(1).float() if kind == "sparse" else features[name]
                 for name, kind in self.columns]
        return self.model(torch.cat(parts, dim=1))


class DenseAndSparse(nn.Module):
    """A DLRM-style model's adapter: schema features -> (dense [N, D], ids [N, F]) positional tensors."""

    def __init__(self, model: nn.Module, id_names: list[str]) -> None:
        super().__init__()
        self.model, self.id_names = model, id_names

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        dense = torch.cat([features["user_dense"], features["item_dense"]], dim=1)
        return self.model(dense, torch.stack([features[name] for name in self.id_names], dim=1))


class KeyedIds(nn.Module):
    """A torchrec model's adapter as the tests write it, fed from schema features (ids [N], sequences [N, L])."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.model(features)


def _flat(name: str) -> Convention:
    cls, columns, _ = flat.MODELS[name]
    torch.manual_seed(11)
    specs = [FeatureSpec(column, "user" if user else "item", "sparse_id", vocab_size=size - 1) if kind == "sparse"
             else FeatureSpec(column, "user" if user else "item", "dense", dim=size)
             for column, user, kind, size in columns]
    return Convention(f"flat/{name}", FlatColumns(cls(columns).eval(), columns), FeatureSchema(tuple(specs)))


def _positional(interaction: str) -> Convention:
    torch.manual_seed(12)
    model = positional.DLRMStyle(positional.USER_DENSE + positional.ITEM_DENSE,
                                 positional.USER_VOCABS + positional.ITEM_VOCABS, interaction).eval()
    ids = [(f"user_id_{i}", "user", v) for i, v in enumerate(positional.USER_VOCABS)]
    ids += [(f"item_id_{i}", "item", v) for i, v in enumerate(positional.ITEM_VOCABS)]
    specs = [FeatureSpec("user_dense", "user", "dense", dim=positional.USER_DENSE),
             FeatureSpec("item_dense", "item", "dense", dim=positional.ITEM_DENSE)]
    specs += [FeatureSpec(name, side, "sparse_id", vocab_size=vocab - 1) for name, side, vocab in ids]
    return Convention(f"positional/{interaction}", DenseAndSparse(model, [name for name, _, _ in ids]).eval(),
                      FeatureSchema(tuple(specs)))


def _torchrec(name: str) -> Convention:
    case = torchrec_models.CASES[name]
    torch.manual_seed(13)
    specs = []
    for feature in case.features:
        side = "user" if feature.user else "item"
        if not feature.vocab:
            specs.append(FeatureSpec(feature.name, side, "dense", dim=feature.shape[0]))
        elif feature.shape:
            specs.append(FeatureSpec(feature.name, side, "id_sequence", vocab_size=feature.vocab - 1,
                                     max_len=feature.shape[0]))
        else:
            specs.append(FeatureSpec(feature.name, side, "sparse_id", vocab_size=feature.vocab - 1))
    return Convention(f"torchrec/{name}", KeyedIds(case.build().eval()), FeatureSchema(tuple(specs)))


CONVENTIONS: dict[str, Callable[[], Convention]] = {
    "flat/deepctr": lambda: _flat("deepctr"),
    "flat/wide_deep_index_lists": lambda: _flat("wide_deep_index_lists"),
    "positional/cat": lambda: _positional("cat"),
    "torchrec/dlrm": lambda: _torchrec("dlrm"),
    "torchrec/ebc_mlp": lambda: _torchrec("ebc_mlp"),
    "torchrec/ec_seq": lambda: _torchrec("ec_seq"),
}


@pytest.mark.parametrize("name", list(CONVENTIONS))
def test_a_packaged_model_serves_every_variant_equal_to_its_eager_model(name: str, tmp_path: Path) -> None:
    convention = CONVENTIONS[name]()
    schema = convention.schema
    generator = torch.Generator().manual_seed(5)
    package(convention.model, schema.example_batch(8, generator), schema, tasks=["score"],
            store=tmp_path, name="user_model")
    loaded = load_artifact(tmp_path / "user_model")
    built = reparameterize_all(loaded.model, (schema.example_batch(8, generator),), loaded.user_features)
    for variant in Variant:
        assert (built[variant].report.variant, built[variant].report.fallback_reason) == (variant, None)
    vani, mari = built[Variant.VANI].flops(1000), built[Variant.MARI].flops(1000)
    assert mari < vani, (name, mari, vani)
    assert built[Variant.MARI].report.to_dict()["concats"], "MaRI split no concat of the stored program"
    for n in NS:
        features = schema.example_batch(n, generator)
        tiled = {k: v.expand(n, *v.shape[1:]) if schema.get(k).is_user else v for k, v in features.items()}
        with torch.no_grad():
            reference = convention.model(tiled).reshape(n)  # [N] or [N, 1], as the model returns it
            for variant in Variant:
                scores = built[variant].module(features)["score"]
                assert scores.shape == (n,)
                assert (scores - reference).abs().max().item() <= TOLERANCE, (name, variant, n)


def test_schema_kinds_cover_the_conventions() -> None:
    kinds = {spec.kind for make in CONVENTIONS.values() for spec in make().schema.features}
    assert kinds == {Kind.SPARSE_ID, Kind.DENSE, Kind.ID_SEQUENCE}


def test_ranker_analyze_counts_a_packaged_jagged_model_with_data_dependent_sizes(tmp_path: Path) -> None:
    """torchrec's padded-to-longest sequences have sizes read from data: analyze counts the rest and says so."""
    import os
    import subprocess
    import sys

    convention = _torchrec("ec_seq_longest")
    package(convention.model, convention.schema.example_batch(8), convention.schema, tasks=["score"],
            store=tmp_path, name="jagged")
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "service.cli", "analyze", str(tmp_path / "jagged"), "--n", "100"],
                          cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "at least" in done.stdout and "data-dependent" in done.stdout


BATCH_SIZES = (1, 9, 2, 30)  # candidates of four requests of four users scored as one call


@pytest.mark.parametrize("name", ["flat/wide_deep_index_lists", "positional/cat", "torchrec/ec_seq",
                                  "torchrec/ec_seq_longest"])
def test_a_packaged_model_batches_requests_of_different_users_equal_to_its_eager_model(name: str,
                                                                                        tmp_path: Path) -> None:
    from service.serving.batching import build_batched

    convention = CONVENTIONS[name]() if name in CONVENTIONS else _torchrec(name.split("/")[1])
    schema = convention.schema
    generator = torch.Generator().manual_seed(6)
    package(convention.model, schema.example_batch(8, generator), schema, tasks=["score"],
            store=tmp_path, name="user_model")
    loaded = load_artifact(tmp_path / "user_model")
    built = reparameterize_all(loaded.model, (schema.example_batch(8, generator),), loaded.user_features)
    forms, batching = build_batched(built, {variant: result.report.variant for variant, result in built.items()},
                                    schema.example_batch)
    requests = [schema.example_batch(n, generator) for n in BATCH_SIZES]
    for variant in Variant:
        assert batching[variant].batched, (name, variant, batching[variant])
        with torch.no_grad():
            together = forms[variant]([((features,), {}) for features in requests])
            for features, scores, n in zip(requests, together, BATCH_SIZES):
                tiled = {k: v.expand(n, *v.shape[1:]) if schema.get(k).is_user else v for k, v in features.items()}
                reference = convention.model(tiled).reshape(n)
                assert (scores["score"] - reference).abs().max().item() <= TOLERANCE, (name, variant, n)
