"""podman, driven from tests: build the Dockerfile (deploy/image/build.sh), run a container until ready, and the
stub CUDA torch wheel the CPU check must refuse."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD = REPO_ROOT / "deploy/image/build.sh"
BUILD_TIMEOUT_S = 1800
READY_TIMEOUT_S = 240  # a bound on waiting, not a claim about start-up time


def wheel_dir() -> Path:
    """Where this machine keeps the torch 2.13.0+cpu wheel (TORCH_WHEEL_DIR, else pip's find-links)."""
    configured = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                                capture_output=True, text=True)
    found = os.environ.get("TORCH_WHEEL_DIR") or configured.stdout.strip()
    if not found or not list(Path(found).glob("torch-2.13.0+cpu-*.whl")):
        pytest.fail(f"no torch-2.13.0+cpu wheel in {found!r}: set TORCH_WHEEL_DIR to a directory holding one")
    return Path(found)


def build(target: str, tag: str, log_path: Path, wheels: Path, **env: str) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    with open(log_path, "w") as log:
        result = subprocess.run([str(BUILD), target, tag, str(wheels)], env={**os.environ, **env}, text=True,
                                stdout=log, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S)
    print(f"\nbuilt {target} as {tag} in {time.monotonic() - started:.0f} s (log {log_path})")
    return result


def podman(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


def stub_cuda_torch_wheel(folder: Path) -> Path:
    """A wheel named and shaped as torch 2.13.0+cu130 (version.cuda set) that holds nothing else."""
    version = "2.13.0+cu130"
    path = folder / f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    files = {
        "torch/__init__.py": f"from torch import version\n__version__ = {version!r}\n",
        "torch/version.py": f"__version__ = {version!r}\ncuda = '13.0'\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: check_image\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        wheel.writestr(f"{info}/RECORD", "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]))
    return path


@dataclass
class Container:
    name: str
    url: str

    def logs(self) -> str:
        result = subprocess.run(["podman", "logs", self.name], capture_output=True, text=True)
        return (result.stdout + result.stderr)[-4000:]  # the server logs to stderr


def run_container(name: str, image: str, env: dict[str, str], volumes: tuple[str, ...] = ()) -> Container:
    """`podman run -d` on the host network, listening on a free 127.0.0.1 port; returns once /readyz is 200."""
    port = free_port()
    subprocess.run(["podman", "rm", "-f", "-v", name], capture_output=True)
    args = ["run", "-d", "--name", name, "--network", "host",
            "-e", "RANKER_HOST=127.0.0.1", "-e", f"RANKER_PORT={port}"]
    args += [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    args += [arg for volume in volumes for arg in ("-v", volume)]
    podman(*args, image)
    container = Container(name, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        state = podman("inspect", "--format", "{{.State.Status}}", name)
        assert state == "running", f"{name} is {state}: {container.logs()}"
        try:
            if httpx.get(f"{container.url}/readyz", timeout=2.0).status_code == 200:
                return container
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{name} not ready in {READY_TIMEOUT_S} s: {container.logs()}"
        time.sleep(0.5)
