"""Version canaries in the fleet config: the fields and their checks, the watcher that builds every version before
the swap (or refuses the whole generation), and `ranker config set --canary/--promote/--rollback`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.serving.fleet_config import FleetConfigError, FleetConfigFile, parse_fleet_config, validated
from tests.conftest import SMALL_MODEL_NAME as NAME
from tests.serving.test_fleet_config_file import GOOD, make_watcher, ranker_config, sample, write_config

CANARY = {"version": "v1", "versions": {"v1": 0.9, "v2": 0.1}, "labels": {"stable": "v1", "canary": "v2"},
          "compare": {"sample_rate": 0.5, "top_k": 5, "min_overlap": 0.2}}


@pytest.fixture()
def model_dir(store: Path, tmp_path: Path) -> Path:
    """default/v1 and default/v2 of the session store, copied: these tests write serving.json."""
    target = tmp_path / "store" / NAME
    for version in ("v1", "v2"):
        shutil.copytree(store / NAME / version, target / version)
    return target


def test_a_canary_config_parses_round_trips_and_names_the_versions_that_serve() -> None:
    config = validated({**GOOD, **CANARY}, "test")
    assert config.serving_versions() == ("v1", "v2")
    assert parse_fleet_config(config.to_json(), "serving.json") == config
    assert config.compare.top_k == 5 and config.compare.min_overlap == 0.2


def test_an_old_file_without_the_canary_fields_is_valid_and_written_as_before() -> None:
    config = parse_fleet_config(json.dumps(GOOD).encode(), "serving.json")
    assert config.versions == {} and config.labels == {} and config.compare.sample_rate == 0.0
    assert config.serving_versions() == ("v1",)
    assert json.loads(config.to_json()) == GOOD


@pytest.mark.parametrize("change, message", [
    ({"versions": {"v2": 1.0}}, "must name the primary version"),
    ({"versions": {"v1": 1.0, "../v2": 1.0}}, "single path component"),
    ({"versions": {"v1": 1.0, "v2": float("inf")}}, "versions weights"),
    ({"versions": {"v1": 1.0, "v2": -0.1}}, "versions weights"),
    ({"versions": {"v1": 0.0, "v2": 0.0}}, "versions weights"),
    ({"labels": {"canary": "v2"}}, "does not serve"),
    ({"versions": {"v1": 1.0, "v2": 0.0}, "labels": {"canary": "v2"}}, "does not serve"),
    ({"labels": {"a/b": "v1"}}, "single path component"),
    ({"compare": {"sample_rate": 1.5}}, "compare.sample_rate"),
    ({"compare": {"top_k": 0}}, "compare.top_k"),
    ({"compare": {"min_overlap": 2}}, "compare.min_overlap"),
    ({"compare": {"every": 1}}, "compare.every"),
])
def test_bad_canary_fields_are_refused_naming_the_field(change: dict, message: str) -> None:
    with pytest.raises(FleetConfigError, match=message):
        validated({**GOOD, **change}, "test")


def test_a_canary_generation_builds_both_versions_before_the_swap_and_a_rollback_drops_the_canary(
    model_dir: Path,
) -> None:
    watcher, metrics = make_watcher(model_dir)
    v1 = watcher.start_up()
    write_config(model_dir, generation=1, **CANARY)
    assert watcher.poll_once()
    active = watcher.runtime.active
    assert active.serving is v1 and set(active.serving_versions()) == {"v1", "v2"}  # v1 reused, v2 built
    assert active.version_router is not None and active.version_router.shares == pytest.approx({"v1": 0.9, "v2": 0.1})
    assert active.labels == {"stable": "v1", "canary": "v2"} and active.compare.top_k == 5
    write_config(model_dir, generation=2, version="v1", labels={"stable": "v1"})
    assert watcher.poll_once()
    after = watcher.runtime.active
    assert after.serving is v1 and dict(after.serving_versions()) == {"v1": v1} and after.version_router is None
    assert sample(metrics, "ranker_reloads_total", model=NAME, outcome="ok") == 2


def test_a_canary_whose_version_cannot_serve_is_refused_whole_and_the_old_generation_keeps_serving(
    model_dir: Path,
) -> None:
    watcher, metrics = make_watcher(model_dir)
    watcher.start_up()
    shutil.copytree(model_dir / "v2", model_dir / "v2-corrupted")
    weights = model_dir / "v2-corrupted" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 0xFF]))
    before = watcher.runtime.active
    write_config(model_dir, generation=1, version="v1", versions={"v1": 0.5, "v2": 0.25, "v2-corrupted": 0.25})
    assert watcher.poll_once() is False
    assert watcher.runtime.active is before and watcher.status()["last_refusal"]["reason"] == "model"
    assert "sha256" in watcher.status()["last_refusal"]["message"]
    assert sample(metrics, "ranker_config_rejections_total", model=NAME, reason="model") == 1


def config_in(model_dir: Path) -> dict:
    config = FleetConfigFile(model_dir).read()
    assert config is not None
    return config.model_dump(mode="json")


def test_ranker_config_set_canary_promote_and_rollback_round_trip(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--store", str(model_dir.parent), "--name", NAME]
    ranker_config("set", *where, "--version", "v1")
    ranker_config("set", *where, "--canary", "v2=0.05", "--compare-sample-rate", "0.1", "--compare-min-overlap", "0.3")
    canary = config_in(model_dir)
    assert (canary["version"], canary["versions"], canary["labels"]) == (
        "v1", {"v1": 0.95, "v2": 0.05}, {"stable": "v1", "canary": "v2"})
    assert canary["compare"] == {"sample_rate": 0.1, "top_k": 10, "min_overlap": 0.3}
    capsys.readouterr()
    ranker_config("show", *where)
    assert json.loads(capsys.readouterr().out)["versions"] == {"v1": 0.95, "v2": 0.05}
    ranker_config("set", *where, "--rollback")
    rolled = config_in(model_dir)
    assert (rolled["version"], rolled["versions"], rolled["labels"]) == ("v1", {}, {"stable": "v1"})
    ranker_config("set", *where, "--canary", "v2=0.5")
    ranker_config("set", *where, "--promote", "v2", "--compare-min-overlap", "none")
    promoted = config_in(model_dir)
    assert (promoted["version"], promoted["versions"], promoted["labels"]) == ("v2", {}, {"stable": "v2"})
    assert promoted["generation"] == 5 and promoted["compare"]["min_overlap"] is None


@pytest.mark.parametrize("args, message", [
    (["--canary", "v1=0.05"], "the primary version"),
    (["--canary", "v9=0.05"], "no version folder"),
    (["--canary", "v2=1.5"], "0 < WEIGHT < 1"),
    (["--canary", "v2"], "VERSION=WEIGHT"),
    (["--promote", "v9"], "no such model or version folder"),
    (["--canary", "v2-corrupted=0.1"], "sha256"),
])
def test_ranker_config_set_refuses_a_canary_that_cannot_serve_and_writes_nothing(
    model_dir: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupted = model_dir / "v2-corrupted"
    shutil.copytree(model_dir / "v2", corrupted)
    weights = corrupted / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 0xFF]))
    where = ["--store", str(model_dir.parent), "--name", NAME]
    ranker_config("set", *where, "--version", "v1")
    before = (model_dir / "serving.json").read_bytes()
    with pytest.raises(SystemExit) as refused:
        ranker_config("set", *where, *args)
    assert message in str(refused.value.code) + capsys.readouterr().err
    assert (model_dir / "serving.json").read_bytes() == before


def test_ranker_config_set_canary_without_a_file_needs_the_primary_named(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RANKER_MODEL_VERSION", raising=False)  # the processes' version is unknown here
    where = ["--store", str(model_dir.parent), "--name", NAME]
    with pytest.raises(SystemExit) as refused:
        ranker_config("set", *where, "--canary", "v2=0.1")
    assert "name the primary with --version" in str(refused.value.code)
    assert not (model_dir / "serving.json").exists()  # not the latest folder, v2 itself, taken as the primary
    ranker_config("set", *where, "--version", "v1", "--canary", "v2=0.1")
    assert config_in(model_dir)["versions"] == {"v1": 0.9, "v2": 0.1}
