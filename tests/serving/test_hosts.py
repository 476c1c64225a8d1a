"""Which models one server serves (RANKER_MODELS, RANKER_MAX_MODELS): parsed, checked and refused at start-up with
a message naming the settings; `*` means every model folder of the store holding a version."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.api.app import create_app
from service.serving.fleet_config import FleetConfig
from service.serving.fleet_state import FleetState
from service.serving.hosts import served_model_names, store_models
from service.serving.settings import Settings


def _store(root: Path, *models: str) -> Path:
    """Model folders with one version each (only the manifest's presence matters for what `*` lists)."""
    for name in models:
        version = root / name / "v1"
        version.mkdir(parents=True)
        (version / "model.json").write_text("{}")
    return root


@pytest.mark.parametrize("written", ["a,b", '["a", "b"]', " a , b ", "a,,b,"])
def test_models_are_read_as_a_comma_list_or_json(written: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKER_MODELS", written)
    monkeypatch.setenv("RANKER_MODEL_NAME", "a")
    assert Settings().models == ["a", "b"]


def test_no_models_serves_model_name_alone() -> None:
    settings = Settings(model_name="solo")
    assert settings.models == [] and served_model_names(settings) == ["solo"]


@pytest.mark.parametrize(("models", "refusal"), [
    (["a", "../etc"], "single path component"),
    (["a", "a"], "listed once"),
    (["*", "a"], "stands alone"),
    (["b", "c"], "must be one of RANKER_MODELS"),
])
def test_unusable_model_lists_are_refused_naming_the_problem(models: list[str], refusal: str) -> None:
    with pytest.raises(ValidationError, match=refusal):
        Settings(model_name="a", models=models)


def test_more_listed_models_than_max_models_are_refused_naming_both_settings() -> None:
    with pytest.raises(ValidationError, match=r"3 models would be served, more than RANKER_MAX_MODELS=2.*MODELS"):
        Settings(model_name="a", models=["a", "b", "c"], max_models=2)
    assert Settings(model_name="a", models=["a", "b"], max_models=2).max_models == 2


def test_every_model_means_the_store_folders_holding_a_version(tmp_path: Path) -> None:
    store = _store(tmp_path, "b", "a")
    (store / "empty").mkdir()  # no version: not a model
    (store / ".staging-a").mkdir()  # hidden: a publish in progress
    _store(store / ".hidden", "x")
    (store / "c" / ".staging-v1").mkdir(parents=True)  # only a hidden version: not a model yet
    (store / "c" / ".staging-v1" / "model.json").write_text("{}")
    assert store_models(store) == ["a", "b"]
    assert served_model_names(Settings(model_store=store, model_name="b", models=["*"])) == ["a", "b"]


def test_every_model_beyond_max_models_or_without_the_default_is_refused_before_anything_loads(
    tmp_path: Path
) -> None:
    store = _store(tmp_path, "a", "b", "c")
    with pytest.raises(ValueError, match="3 models would be served, more than RANKER_MAX_MODELS=2"):
        create_app(Settings(model_store=store, model_name="a", models=["*"], max_models=2))
    with pytest.raises(ValueError, match="RANKER_MODEL_NAME 'z'"):
        served_model_names(Settings(model_store=store, model_name="z", models=["*"]))


def test_each_model_gets_the_servers_settings_and_only_the_default_keeps_its_pinned_version() -> None:
    settings = Settings(model_name="a", model_version="v7", models=["a", "b"], max_queued_requests=3)
    assert (settings.for_model("a").model_version, settings.for_model("b").model_version) == ("v7", None)
    assert settings.for_model("b").model_name == "b" and settings.for_model("b").max_queued_requests == 3


def test_the_replicas_fleet_record_is_kept_per_model(tmp_path: Path) -> None:
    """Two models in the workers of one replica: what a worker applied to one never answers for the other."""
    fleet = FleetState(tmp_path)
    alpha, beta = fleet.of_model("alpha"), fleet.of_model("beta")
    applied = FleetConfig.from_settings(Settings(model_version="v3")).model_copy(update={"generation": 2})
    alpha.remember(applied)
    assert alpha.last_applied() == applied and beta.last_applied() is None
    assert beta.version_for(2, lambda: "v9") == "v9" and alpha.version_for(2, lambda: "v1") == "v1"
    assert FleetState(None).of_model("alpha").folder is None  # a single process: no record at all
