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
from service.serving import compile as compile_module
from service.serving.compile import NOT_ROUTED, CompiledVariant, compile_variant, is_faster
from service.serving.example_request import example_request
from service.serving.fleet_config import FleetConfig
from service.serving.loading import build_serving_model
from service.serving.serving_model import ServingModel
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
    settings = small_settings(store, compile="off")
    serving = build_serving_model(settings, settings.model_path)
    assert serving.compilation == {"mode": "off", "variants": {}}
    assert not any(isinstance(module, CompiledVariant) for module in serving.variants.values())


def test_auto_is_the_default_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANKER_COMPILE", raising=False)  # tests/conftest.py turns it off for the other tests
    assert Settings().compile == "auto"


def test_auto_compiles_only_the_routed_variants_and_keeps_one_only_when_it_measured_faster(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(compile_module.INDUCTOR_CACHE_ENV, str(tmp_path / "unused"))  # restored after the test
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = small_settings(store, compile="auto", compile_cache_dir=tmp_path / "inductor")
        serving = build_serving_model(settings, settings.model_path, routed=frozenset({Variant.MARI}))
    finally:
        torch.set_num_threads(previous)
    outcomes = serving.compilation["variants"]
    assert serving.compilation["mode"] == "auto"
    for variant in (Variant.VANI, Variant.UOI):
        assert outcomes[variant.value] == {"compiled": False, "seconds": 0.0, "reason": NOT_ROUTED, "speed_ms": None}
        assert not isinstance(serving.variants[variant], CompiledVariant)
    mari = outcomes["mari"]
    speed = {int(n): times for n, times in mari["speed_ms"].items()}
    assert set(speed) == set(WARMUP) and all(t["compiled"] > 0 and t["uncompiled"] > 0 for t in speed.values())
    # whichever way this machine's timings went, the decision follows them and says so
    assert mari["compiled"] is is_faster(speed)
    assert isinstance(serving.variants[Variant.MARI], CompiledVariant) is mari["compiled"]
    if not mari["compiled"]:
        assert mari["reason"].startswith("not faster than uncompiled at the warm-up sizes: N=1 ")
    assert any((tmp_path / "inductor").rglob("*")), "inductor's cache is kept in RANKER_COMPILE_CACHE_DIR"


class _Doubler(torch.nn.Module):
    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"ctr": torch.sigmoid(2 * features["x"].sum(-1))}


@pytest.mark.parametrize(("compiled_s", "uncompiled_s", "kept"), [(0.001, 0.002, True), (0.002, 0.001, False)])
def test_auto_keeps_the_compiled_module_only_when_its_interleaved_medians_are_lower(
    monkeypatch: pytest.MonkeyPatch, compiled_s: float, uncompiled_s: float, kept: bool
) -> None:
    def measured(calls: dict[str, Any], repeats: int, warmup: int) -> dict[str, float]:
        for call in calls.values():  # both still run: the numbers are what is made up
            call()
        return {"compiled": compiled_s, "uncompiled": uncompiled_s}

    monkeypatch.setattr(compile_module, "interleaved_medians", measured)
    module = _Doubler()
    module_out, outcome = compile_variant(Variant.MARI, module, lambda n, g: {"x": torch.rand(n, 3, generator=g)},
                                          (1, 4), 1e-5, check_speed=True)
    assert outcome.speed == {4: {"compiled": compiled_s * 1e3, "uncompiled": uncompiled_s * 1e3},
                             1: {"compiled": compiled_s * 1e3, "uncompiled": uncompiled_s * 1e3}}
    assert outcome.compiled is kept and isinstance(module_out, CompiledVariant) is kept
    assert (outcome.reason is None) is kept


def test_faster_means_a_geometric_mean_ratio_below_one_over_the_warm_up_sizes() -> None:
    assert is_faster({1: {"compiled": 2.0, "uncompiled": 3.0}, 1000: {"compiled": 52.0, "uncompiled": 50.0}})
    assert not is_faster({1: {"compiled": 1.0, "uncompiled": 1.05}, 1000: {"compiled": 65.0, "uncompiled": 50.0}})
    assert not is_faster({100: {"compiled": 5.0, "uncompiled": 5.0}})  # a tie keeps the module as built


def test_the_routed_variants_are_the_default_the_weighted_arms_and_a_sampled_shadow() -> None:
    config = FleetConfig(generation=1, version=None, variant=Variant.MARI, ab_split={Variant.UOI: 1.0,
                           Variant.VANI: 0.0}, shadow={"variant": Variant.VANI, "sample_rate": 0.0})
    assert config.routed_variants() == {Variant.MARI, Variant.UOI}
    shadowed = config.updated({"shadow": {"sample_rate": 0.1}})
    assert shadowed.routed_variants() == {Variant.MARI, Variant.UOI, Variant.VANI}


def _body(schema: FeatureSchema) -> bytes:
    return json.dumps(example_request(schema, n=5)).encode()
