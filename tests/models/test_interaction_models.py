"""The feature-interaction rankers (DeepFM, DCNv2 with 3 cross layers, AutoInt, rDCN): their layout, learning,
and that every engine variant reproduces the eager model on tiled user inputs (docs/ARCHITECTURE.md section 3).
Shapes, export and float64 are checked for every architecture in test_rankers.py and test_export.py."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from service.engine import Reparameterized, Variant, reparameterize_all
from service.engine.equivalence import SCORES
from service.training.train import TrainSettings, train_model
from tests.models.conftest import small_model
from tests.models.small_configs import SMALL_OVERRIDES
from tests.tiling import tile_user_features

INTERACTION_ARCHITECTURES = ["deepfm", "dcnv2", "autoint", "rdcn"]
ENGINE_N = (1, 7, 1000)
BUILD_N = 7
# A few hundred Adam steps on small models: enough to learn the planted signal, a few seconds per model.
QUICK_TRAINING = TrainSettings(steps=120, batch_size=256, learning_rate=5e-3, holdout_rows=4096)


@pytest.fixture(params=INTERACTION_ARCHITECTURES)
def interaction_arch(request: pytest.FixtureRequest) -> str:
    return request.param


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights everywhere (zero-initialised biases would hide a dropped user-side bias)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                offset = 1.0 if "norm" in name else 0.0
                param.copy_(torch.empty_like(param).uniform_(-0.3, 0.3, generator=generator) + offset)
            elif "embeddings" in name or "first_order" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5)
    return model


def _as(features: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in features.items()}


def _variants(
    name: str, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, object, dict[Variant, Reparameterized]]:
    """One small model with random weights per architecture and dtype, and every variant the engine derives."""
    # functools.cache keys on the arguments as passed: _variants("rdcn") and _variants("rdcn", torch.float32)
    # would be two entries, each its own export of the same model; hence one positional call to the cached build.
    return _built_variants(name, dtype)


@functools.cache
def _built_variants(name: str, dtype: torch.dtype) -> tuple[nn.Module, object, dict[Variant, Reparameterized]]:
    _, _, model, schema = small_model(name, seed=3)
    model = _randomize(model, seed=4).eval().to(dtype)
    example = _as(schema.example_batch(BUILD_N, torch.Generator().manual_seed(5)), dtype)
    users = [spec.name for spec in schema.user_features]
    return model, schema, reparameterize_all(model, (example,), users)


def test_schema_splits_user_and_candidate_features_and_dcnv2_has_three_cross_layers() -> None:
    for name in INTERACTION_ARCHITECTURES:
        _, _, model, schema = small_model(name)
        assert {s.name for s in schema.user_features} >= {"user_id", "user_dense"}
        assert {s.name for s in schema.candidate_features} >= {"item_id", "item_dense", "cross_dense"}
    assert len(small_model("dcnv2")[2].cross.layers) == 3
    assert len(small_model("rdcn")[2].cross.candidate_layers) == 3


def test_short_training_beats_chance_on_every_task(interaction_arch: str) -> None:
    result = train_model(interaction_arch, seed=1, config_overrides=SMALL_OVERRIDES[interaction_arch],
                         settings=QUICK_TRAINING)
    for task, auc in result.metrics["holdout_auc"].items():
        assert auc > 0.55, f"{interaction_arch} {task}: holdout AUC {auc}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("variant", list(Variant), ids=lambda v: v.value)
def test_every_engine_variant_matches_the_eager_model_on_tiled_users(
    interaction_arch: str, variant: Variant, dtype: torch.dtype
) -> None:
    model, schema, variants = _variants(interaction_arch, dtype)
    built = variants[variant]
    assert built.report.fallback_reason is None, built.report.fallback_reason
    for n in ENGINE_N:
        features = _as(schema.example_batch(n, torch.Generator().manual_seed(100 + n)), dtype)
        with torch.no_grad():
            reference = model(tile_user_features(schema, features, n))
        with torch.inference_mode():
            scores = built.module(features)
        assert list(scores) == list(reference)
        for task, want in reference.items():
            assert scores[task].shape == (n,)
            worst = (scores[task] - want).abs().max().item()
            assert worst <= SCORES.absolute(dtype), f"{variant.value} N={n} {task}: max |diff| {worst:.2e}"


def test_mari_splits_the_rdcn_candidate_cross_layers_and_head() -> None:
    """Every candidate cross Linear reads cat([u, c]); MaRI must split each (user GEMM once per request)."""
    model, _, variants = _variants("rdcn")
    rewritten = {c.node for c in variants[Variant.MARI].report.rewritten}
    num_layers = len(model.cross.candidate_layers)
    num_tasks = len(model.config.tasks)
    # one Linear per candidate cross layer, the deep MLP's first Linear, one head per task
    assert len(rewritten) == num_layers + 1 + num_tasks


def test_token_sets_are_decomposed_in_deepfm_and_autoint() -> None:
    """FM sums and the first attention layer's user-token projections are found in the graph, not declared."""
    for name, pushed in (("deepfm", "sum"), ("autoint", "linear")):
        report = _variants(name)[2][Variant.MARI].report
        assert report.token_concats, f"{name}: no user/candidate token set found"
        assert any(pushed in t.pushed_through for t in report.token_concats), f"{name}: {report.token_concats}"


def test_rdcn_user_block_runs_once_per_request_under_uoi() -> None:
    """The user cross layers (behind an eval BatchNorm on user-only data) must not be tiled."""
    _, _, variants = _variants("rdcn")
    assert variants[Variant.UOI].flops(1000) < 0.8 * variants[Variant.VANI].flops(1000)
