"""What never runs a model never imports torch: the settings, the fleet config, `ranker --help` and `ranker config
show` (service/store/versions.py, the lazy names of service.engine and service.store). torch's import is most of
a CLI command's start-up (about 2.5 s of 3 on the development machine, against a quarter second without it).

Each check runs in a fresh interpreter: this test process has imported torch long ago."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.engine import Variant
from service.serving.fleet_config import FleetConfig
from service.serving.settings import Settings
from service.store import ArtifactError
from service.store.versions import check_component, next_version, resolve_version

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run_without_torch(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`code`, then a check that torch was never imported, in a fresh interpreter."""
    check = "\nimport sys\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    return subprocess.run([sys.executable, "-c", code + check], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_settings_fleet_config_and_the_cli_help_do_not_import_torch() -> None:
    done = _run_without_torch(
        "from service.serving.settings import Settings\n"
        "from service.serving.fleet_config import FleetConfig\n"
        "from service.cli import build_parser\n"
        "build_parser().format_help()  # its epilog lists every setting: the Settings class is read\n"
        "Settings(); FleetConfig.from_settings(Settings())\n")
    assert done.returncode == 0, done.stderr


def test_config_show_reads_the_fleet_config_without_importing_torch(tmp_path: Path) -> None:
    (tmp_path / "default").mkdir()
    written = {**json.loads(FleetConfig.from_settings(Settings()).to_json()), "generation": 3, "variant": "uoi"}
    (tmp_path / "default" / "serving.json").write_text(json.dumps(written))
    done = _run_without_torch("from service.cli import main\nmain(['config', 'show'])\n",
                              env={"RANKER_MODEL_STORE": str(tmp_path), "RANKER_MODEL_NAME": "default"})
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["generation"] == 3 and shown["variant"] == Variant.UOI.value


def test_the_lazy_names_resolve_and_an_unknown_one_is_an_attribute_error() -> None:
    import service.engine
    import service.store
    from service.engine.pipeline import reparameterize
    from service.store.artifact import load_artifact

    assert service.engine.reparameterize is reparameterize
    assert service.store.load_artifact is load_artifact
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        service.engine.nothing  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        service.store.nothing  # noqa: B018


def test_versions_sort_naturally_and_names_are_one_path_component(tmp_path: Path) -> None:
    for version in ("v2", "v10", "v9"):
        (tmp_path / "ranker" / version).mkdir(parents=True)
        (tmp_path / "ranker" / version / "model.json").write_text("{}")
    assert resolve_version(tmp_path / "ranker").name == "v10"
    assert next_version(tmp_path, "ranker") == "v11"
    assert check_component("model name", "ranker.v2") == "ranker.v2"
    for bad in ("../up", "a/b", "", ".hidden"):
        with pytest.raises(ArtifactError, match="single path component"):
            check_component("model name", bad)
