"""A variant the warm-up finds not equivalent to VanI serves as VanI, and every report the service shows says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from service.engine import Variant
from service.serving import loading
from service.serving.loading import build_serving_model
from service.serving.settings import Settings
from tests.conftest import SMALL_MODEL_NAME


class _Shifted(nn.Module):
    """A variant that drifted: the real MaRI's scores plus 1 (what a wrong rewrite would look like)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {task: scores + 1.0 for task, scores in self.inner(features).items()}


def test_a_variant_refused_at_warm_up_is_reported_as_running_as_vani_everywhere(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_compile = loading.compile_variants

    def compile_with_a_drifted_mari(variants: dict[Variant, nn.Module], *args: Any) -> Any:
        compiled, report = real_compile(variants, *args)
        return {**compiled, Variant.MARI: _Shifted(compiled[Variant.MARI])}, report

    monkeypatch.setattr(loading, "compile_variants", compile_with_a_drifted_mari)
    settings = Settings(model_store=store, model_name=SMALL_MODEL_NAME, model_version="v1", compile="off",
                        warmup_candidates=(1, 8), analysis_candidates=100)
    serving = build_serving_model(settings, store / SMALL_MODEL_NAME / "v1")

    assert serving.variants[Variant.MARI] is serving.variants[Variant.VANI]
    assert serving.statuses[Variant.MARI].runs_as is Variant.VANI
    row = serving.analysis["flops"]["mari"]
    assert row["runs_as"] == "vani"
    assert row["fallback_reason"] == serving.statuses[Variant.MARI].fallback_reason
    assert "warm-up at N=1" in row["fallback_reason"]
    assert serving.analysis["flops"]["uoi"]["runs_as"] == "uoi"  # the others are untouched
