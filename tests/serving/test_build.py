"""build_variants: every variant of a stored model, captured on its schema's example call."""

from __future__ import annotations

from pathlib import Path

import torch

from service.engine import Variant
from service.engine.equivalence import SCORES, max_difference
from service.serving.build import build_variants
from service.store.artifact import load_artifact


def test_every_variant_of_a_stored_model_is_built_and_scores_like_vani(store: Path) -> None:
    loaded = load_artifact(store / "default" / "v1")
    built = build_variants(loaded.model, loaded.manifest.user_features, loaded.schema.example_batch)
    assert {variant: result.report.variant for variant, result in built.items()} == {v: v for v in Variant}
    features = loaded.schema.example_batch(50, torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = built[Variant.VANI].module(features)
        for variant in (Variant.UOI, Variant.MARI):
            assert max_difference(built[variant].module(features), reference) <= SCORES.bound(reference)
