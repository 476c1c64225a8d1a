"""Compiled variants are frozen: inductor folds the weights into the compiled graph (constants, linear weights
packed once), which is what makes them faster (service/serving/compile.py), and is safe because a served model
is never mutated. Shown by mutating the weights after compiling: the uncompiled module follows, the compiled
one keeps computing with the weights it was compiled with."""

from __future__ import annotations

from pathlib import Path

import torch

from service.engine import Variant
from service.serving.build import build_variants
from service.serving.compile import compile_variant
from service.store.artifact import load_artifact
from tests.conftest import SMALL_MODEL_NAME


def test_a_compiled_variant_is_equivalent_and_holds_its_weights_as_constants(store: Path) -> None:
    artifact = load_artifact(store / SMALL_MODEL_NAME / "v1")
    mari = build_variants(artifact.model, artifact.manifest.user_features, artifact.schema.example_batch,
                          variants=(Variant.VANI, Variant.MARI))[Variant.MARI].module
    compiled, outcome = compile_variant(Variant.MARI, mari, artifact.schema.example_batch, [1, 16], 1e-4)
    assert outcome.compiled, outcome.reason
    batch = artifact.schema.example_batch(9, torch.Generator().manual_seed(5))  # a size it was not warmed at
    with torch.inference_mode():
        before = compiled(batch)
        assert all(torch.allclose(before[task], mari(batch)[task], atol=1e-5) for task in before)
        for weight in mari.parameters():
            if weight.dim() == 2:
                weight.add_(0.5)
        changed, kept = mari(batch), compiled(batch)
    assert any(not torch.allclose(changed[task], before[task], atol=1e-3) for task in before)  # the mutation shows
    assert any(not torch.allclose(kept[task], changed[task], atol=1e-3) for task in before)  # folded: not seen
