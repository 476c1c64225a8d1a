"""docker-compose.yml resolved by a real compose implementation (`podman-compose config`, from the dev extra),
not only read as YAML: interpolation, required variables, the services and the mounts they get.

`config` asks podman nothing but its version; on a machine without podman (make test does not install it) a
stand-in that answers `podman --version` is given as --podman-path, so the check runs everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_deploy_files import COMPOSE, REPO_ROOT, REQUIRED_COMPOSE_VARIABLES

PODMAN_COMPOSE = Path(sys.executable).parent / "podman-compose"
TOKEN = "a-test-admin-token-0123456789"
VALUES = {"RANKER_ADMIN_TOKEN": TOKEN, "GRAFANA_ADMIN_PASSWORD": "a-test-password"}


def podman_path(tmp_path: Path) -> str:
    found = shutil.which("podman")
    if found:
        return found
    stand_in = tmp_path / "podman"
    stand_in.write_text('#!/bin/sh\n'
                        'case "$1" in version|--version) echo "podman version 4.3.1"; exit 0;; esac\nexit 1\n')
    stand_in.chmod(0o755)
    return str(stand_in)


def compose_config(tmp_path: Path, values: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert PODMAN_COMPOSE.exists(), f"{PODMAN_COMPOSE} missing: the dev extra installs podman-compose (make setup)"
    env = {key: value for key, value in os.environ.items() if key not in REQUIRED_COMPOSE_VARIABLES} | values
    return subprocess.run([str(PODMAN_COMPOSE), "--podman-path", podman_path(tmp_path), "-f", str(COMPOSE), "config"],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)


def resolved(tmp_path: Path) -> dict[str, Any]:
    result = compose_config(tmp_path, VALUES)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_resolves_the_stack_with_the_required_variables_set(tmp_path: Path) -> None:
    config = resolved(tmp_path)
    assert set(config["services"]) == {"ranker", "prometheus", "grafana", "locust"}
    ranker = config["services"]["ranker"]
    assert ranker["environment"]["RANKER_ADMIN_TOKEN"] == TOKEN
    assert ranker["environment"]["RANKER_VARIANT"] == "auto"  # a ${VAR:-default} resolved to its default
    assert config["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == VALUES[
        "GRAFANA_ADMIN_PASSWORD"]


@pytest.mark.parametrize("missing", REQUIRED_COMPOSE_VARIABLES)
def test_compose_refuses_to_resolve_without_a_required_variable(tmp_path: Path, missing: str) -> None:
    result = compose_config(tmp_path, {key: value for key, value in VALUES.items() if key != missing})
    assert result.returncode != 0 and missing in result.stderr, result.stderr[-2000:]


def test_every_bind_mount_of_the_resolved_stack_exists_in_the_repository(tmp_path: Path) -> None:
    mounts = [(name, str(volume).split(":")[0]) for name, service in resolved(tmp_path)["services"].items()
              for volume in service.get("volumes", [])]
    binds = [(name, source) for name, source in mounts if source.startswith((".", "/"))]
    assert ("prometheus", "./deploy/prometheus") in binds, binds
    missing = [(name, source) for name, source in binds if not (REPO_ROOT / source).exists()]
    assert not missing, missing
