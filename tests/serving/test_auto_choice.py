"""The `auto` default: how it is spelled in settings and serving.json, what it routes, and what compile=auto compiles
under it. Times come from an injected timer, so the mechanism is tested, never this machine's speed."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from service.engine import Variant
from service.serving.fastest import compile_targets, measure_forms
from service.serving.fleet_config import FleetConfig, FleetConfigError, parse_fleet_config, validated
from service.serving.routing import Auto, VariantRouter
from service.serving.settings import Settings, describe_settings
from tests.serving.test_fastest import Marked, _example

NO_SHADOW = {"variant": None, "sample_rate": 0.0}


def _config(**fields: object) -> FleetConfig:
    return validated({"generation": 1, "version": "v1", "variant": "auto", "ab_split": {}, "shadow": NO_SHADOW,
                      **fields}, "test")


def test_the_default_is_auto_and_a_named_variant_stays_that_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().variant is Auto.AUTO
    assert dict((name, default) for name, default, _ in describe_settings())["RANKER_VARIANT"] == "auto"
    for name in ("vani", "uoi", "mari"):
        assert Settings(variant=name).variant is Variant(name)
    monkeypatch.setenv("RANKER_VARIANT", "uoi")
    assert Settings().variant is Variant.UOI
    monkeypatch.setenv("RANKER_VARIANT", "auto")
    assert Settings().variant is Auto.AUTO


def test_an_unknown_default_is_refused_naming_the_four_choices() -> None:
    with pytest.raises(ValidationError, match="must be one of vani, uoi, mari, auto, got 'fastest'"):
        Settings(variant="fastest")
    with pytest.raises(FleetConfigError, match="field variant: .*vani, uoi, mari, auto"):
        _config(variant="MaRI")


def test_serving_json_spells_auto_as_a_string_and_reads_it_back() -> None:
    config = FleetConfig.from_settings(Settings())
    assert json.loads(config.to_json())["variant"] == "auto"
    assert parse_fleet_config(config.to_json(), "serving.json").variant is Auto.AUTO
    assert config.updated({"variant": "mari"}).variant is Variant.MARI
    assert config.updated({"variant": "mari"}).updated({"variant": "auto"}).variant is Auto.AUTO


def test_ab_arms_and_the_shadow_must_name_real_variants() -> None:
    with pytest.raises(FleetConfigError, match="ab_split"):
        _config(ab_split={"auto": 1.0})
    with pytest.raises(FleetConfigError, match="shadow"):
        _config(shadow={"variant": "auto", "sample_rate": 0.1})
    with pytest.raises(ValidationError):
        Settings(shadow_variant="auto", shadow_sample_rate=0.1)


def test_the_router_hands_auto_on_for_anonymous_users_and_real_arms_to_users_in_a_split() -> None:
    router = VariantRouter("auto", {Variant.MARI: 1.0})
    assert router.route(None) is Auto.AUTO
    assert router.route("user-7") is Variant.MARI
    assert VariantRouter(Auto.AUTO, {}).route("user-7") is Auto.AUTO
    assert router.to_dict() == {"default_variant": "auto", "ab_split": {"mari": 1.0}}


def test_routed_variants_name_auto_beside_the_arms_and_the_shadow() -> None:
    config = _config(ab_split={"vani": 1.0, "uoi": 0.0}, shadow={"variant": "uoi", "sample_rate": 0.5})
    assert config.routed_variants() == {Auto.AUTO, Variant.VANI, Variant.UOI}


def test_compile_auto_compiles_the_named_variants_and_under_auto_the_form_it_serves_at_the_most_sizes() -> None:
    forms = {Variant.VANI: Marked(0.0), Variant.UOI: Marked(1.0), Variant.MARI: Marked(2.0)}
    table = {1: {"vani": 1.0, "uoi": 2.0, "mari": 3.0}, 16: {"vani": 3.0, "uoi": 2.0, "mari": 1.0},
             100: {"vani": 3.0, "uoi": 2.0, "mari": 1.0}}

    def timer(calls, repeats, warmup):
        n = next(iter(calls.values()))()["click"].shape[0]
        return {name: table[n][name] for name in calls}

    uncompiled = measure_forms(forms, _example, (1, 16, 100), timer)
    assert uncompiled.fastest == {1: Variant.VANI, 16: Variant.MARI, 100: Variant.MARI}
    assert compile_targets(frozenset({Auto.AUTO}), uncompiled) == {Variant.MARI}  # fastest at two sizes of three
    assert compile_targets(frozenset({Auto.AUTO, Variant.UOI}), uncompiled) == {Variant.UOI, Variant.MARI}
    tie = measure_forms(forms, _example, (1, 16), timer)  # VanI at 1, MaRI at 16: the largest size's
    assert compile_targets(frozenset({Auto.AUTO}), tie) == {Variant.MARI}
    assert compile_targets(frozenset({Variant.UOI}), uncompiled) == {Variant.UOI}
    assert compile_targets(frozenset({Variant.UOI}), None) == {Variant.UOI}
    assert compile_targets(None, uncompiled) is None
