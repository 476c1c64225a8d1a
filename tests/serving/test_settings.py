"""Settings: environment, config file, priorities and refusal of unsafe values at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.engine import Variant
from service.engine.variants import CAPTURE_CANDIDATES
from service.serving.routing import Auto
from service.serving.settings import Settings


def test_defaults_serve_auto_from_the_latest_default_model() -> None:
    settings = Settings()
    assert settings.variant is Auto.AUTO and settings.model_path == Path("model_store/default")
    assert settings.admin_token is None and settings.shadow_sample_rate == 0
    assert settings.trace_candidates == CAPTURE_CANDIDATES


def test_environment_overrides_the_config_file_which_overrides_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ranker.toml"
    config.write_text('variant = "uoi"\nmax_candidates = 77\n[ab_split]\nmari = 0.75\nvani = 0.25\n')
    monkeypatch.setenv("RANKER_CONFIG_FILE", str(config))
    monkeypatch.setenv("RANKER_MAX_CANDIDATES", "99")
    settings = Settings()
    assert settings.variant is Variant.UOI
    assert settings.max_candidates == 99
    assert settings.ab_split == {Variant.MARI: 0.75, Variant.VANI: 0.25}


def test_json_config_files_and_json_environment_values_are_read(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "ranker.json"
    config.write_text('{"model_version": "v3", "warmup_candidates": [2, 8]}')
    monkeypatch.setenv("RANKER_CONFIG_FILE", str(config))
    monkeypatch.setenv("RANKER_AB_SPLIT", '{"uoi": 1}')
    settings = Settings()
    assert settings.model_path == Path("model_store/default/v3") and settings.warmup_candidates == (2, 8)
    assert settings.ab_split == {Variant.UOI: 1.0}


@pytest.mark.parametrize("values", [
    {"shadow_sample_rate": 0.5},  # no shadow variant
    {"shadow_sample_rate": 1.5, "shadow_variant": "vani"},
    {"admin_token": "short"},
    {"ab_split": {"mari": -1.0}},
    {"ab_split": {"mari": 0.0}},
    {"variant": "turbo"},
    {"max_candidates": 0},
    {"max_id": 2**64},
    {"unknown_setting": 1},
    {"max_body_bytes": 2**20, "max_buffered_body_bytes": 2**19},  # the largest body could never be read
    {"header_read_timeout_s": 0},
    {"keep_alive_timeout_s": float("inf")},
    {"max_header_bytes": 100},
    {"max_connections": 0},
])
def test_unsafe_or_unknown_settings_are_refused(values: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(**values)


def test_a_missing_config_file_is_refused_with_its_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RANKER_CONFIG_FILE", str(tmp_path / "absent.toml"))
    with pytest.raises(ValueError, match="absent.toml"):
        Settings()


def test_the_body_budget_holds_four_of_the_largest_bodies_unless_set() -> None:
    assert Settings(max_body_bytes=2**20).body_budget_bytes == 4 * 2**20
    assert Settings(max_body_bytes=2**20, max_buffered_body_bytes=2**21).body_budget_bytes == 2**21


def test_a_misspelled_setting_variable_is_refused_with_the_name_it_was_likely_meant_as(monkeypatch) -> None:
    monkeypatch.setenv("RANKER_MAX_CANDIDATE", "10")
    with pytest.raises(ValueError, match=r"RANKER_MAX_CANDIDATE \(did you mean RANKER_MAX_CANDIDATES\?\)"):
        Settings()
    monkeypatch.delenv("RANKER_MAX_CANDIDATE")
    monkeypatch.setenv("RANKER_ZZZ", "1")
    with pytest.raises(ValueError, match=r"unknown setting variable\(s\): RANKER_ZZZ;"):
        Settings()


def test_the_variables_of_ranker_serve_and_the_image_are_not_settings_and_are_allowed(monkeypatch) -> None:
    for name, value in {"RANKER_HOST": "0.0.0.0", "RANKER_PORT": "8000", "RANKER_WORKERS": "2",
                        "RANKER_MAX_CANDIDATES": "10"}.items():
        monkeypatch.setenv(name, value)
    assert Settings().max_candidates == 10


def test_ranker_serve_exits_in_one_line_on_a_misspelled_setting(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "RANKER_MAX_CANDIDATE": "10", "RANKER_MODEL_STORE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--port", "1"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "did you mean RANKER_MAX_CANDIDATES?" in done.stderr and "Traceback" not in done.stderr
