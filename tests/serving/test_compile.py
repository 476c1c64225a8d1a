"""RANKER_COMPILE=inductor: every variant compiled at start-up with a dynamic candidate batch, scoring like
itself uncompiled; a variant that fails to compile, or compiles to other scores, is served uncompiled."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from torch.utils import _pytree as pytree

from service.api.app import create_app
from service.engine import Variant
from service.engine.equivalence import SCORES, max_difference
from service.features.schema import FeatureSchema
from service.serving.compile import CompiledVariant
from service.serving.example_request import example_request
from service.serving.runtime import ServingModel, build_serving_model
from service.serving.settings import Settings
from tests.conftest import SMALL_MODEL_NAME

WARMUP = (1, 8)  # the compiled graphs: N = 1 and the dynamic N >= 2


def small_settings(store: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"model_store": store, "model_name": SMALL_MODEL_NAME, "model_version": "v1",
                              "warmup_candidates": WARMUP, "analysis_candidates": 100, "torch_threads": 1}
    return Settings(**{**values, **overrides})


@pytest.fixture(scope="module")
def compiled(store: Path) -> Iterator[ServingModel]:
    """Built under the tests' one thread (the compiled graphs guard on the thread count)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = small_settings(store, compile="inductor")
    yield build_serving_model(settings, settings.model_path)
    torch.set_num_threads(previous)


def test_inductor_compiles_every_variant_and_reports_its_seconds(compiled: ServingModel) -> None:
    assert compiled.compilation["mode"] == "inductor"
    outcomes = compiled.compilation["variants"]
    assert set(outcomes) == {v.value for v in Variant}
    for variant, module in compiled.variants.items():
        assert outcomes[variant.value]["compiled"] is True, outcomes[variant.value]
        assert outcomes[variant.value]["reason"] is None
        assert outcomes[variant.value]["seconds"] > 0
        assert isinstance(module, CompiledVariant)


@pytest.mark.parametrize("n", [1, 2, 8, 37, 300])
def test_compiled_variant_scores_equal_uncompiled_without_recompiling(
    compiled: ServingModel, schema: FeatureSchema, n: int
) -> None:
    features = schema.example_batch(n, torch.Generator().manual_seed(n))
    vani = compiled.variants[Variant.VANI]
    assert isinstance(vani, CompiledVariant)
    with torch.inference_mode():
        reference = vani.eager(features)
        for variant, module in compiled.variants.items():
            assert isinstance(module, CompiledVariant)
            with torch.compiler.set_stance("fail_on_recompile"):  # N served by a graph compiled at start-up
                scores = module.compiled(features)
            assert max_difference(scores, module.eager(features)) <= SCORES.float32, variant
            assert max_difference(scores, reference) <= SCORES.float32, variant


def test_a_compiled_variant_serves_from_an_inference_thread_without_recompiling(
    compiled: ServingModel, schema: FeatureSchema
) -> None:
    module = compiled.variants[Variant.MARI]
    assert isinstance(module, CompiledVariant)
    features = schema.example_batch(8, torch.Generator().manual_seed(3))

    def score_on_slot() -> Any:  # as the inference pool does: another thread than the one that compiled
        with torch.inference_mode(), torch.compiler.set_stance("fail_on_recompile"):
            return module.compiled(features)

    with ThreadPoolExecutor(1) as slot:
        slot.submit(score_on_slot).result()


def test_a_variant_that_fails_to_compile_is_served_uncompiled_and_says_why(
    store: Path, schema: FeatureSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_compile(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("inductor is broken here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken_compile)
    with TestClient(create_app(small_settings(store, compile="inductor"))) as client:
        report = client.get("/v1/models").json()["compile"]
        response = client.post("/rank", content=_body(schema), headers={"Content-Type": "application/json"})
    assert report["mode"] == "inductor"
    for variant in Variant:
        outcome = report["variants"][variant.value]
        assert outcome["compiled"] is False
        assert outcome["reason"] == "RuntimeError: inductor is broken here"
    assert response.status_code == 200


def test_a_compile_that_changes_scores_is_served_uncompiled(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def off_by_a_bit(module: torch.nn.Module, **kwargs: Any) -> Any:
        return lambda *args: pytree.tree_map(lambda t: t + 1e-3, module(*args))

    monkeypatch.setattr(torch, "compile", off_by_a_bit)
    settings = small_settings(store, compile="inductor")
    serving = build_serving_model(settings, settings.model_path)
    for variant, module in serving.variants.items():
        outcome = serving.compilation["variants"][variant.value]
        assert outcome["compiled"] is False and "differ from uncompiled" in outcome["reason"]
        assert not isinstance(module, CompiledVariant)


def test_compile_off_leaves_the_variants_as_built(store: Path) -> None:
    settings = small_settings(store)
    serving = build_serving_model(settings, settings.model_path)
    assert serving.compilation == {"mode": "off", "variants": {}}
    assert not any(isinstance(module, CompiledVariant) for module in serving.variants.values())


def _body(schema: FeatureSchema) -> bytes:
    return json.dumps(example_request(schema, n=5)).encode()
