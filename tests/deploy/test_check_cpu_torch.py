"""deploy/image/check_cpu_torch.py, the Dockerfile's refusal of a CUDA torch, on stub torch packages.

`torch.cuda.is_available()` passed a 5 GB CUDA build on a machine without a GPU; the check reads what the
build says about itself. Here it runs as the Dockerfile runs it, on a stub `torch` first on the path, and on
the venv's real CPU torch (tests/image/ also builds the image with a stub CUDA wheel, which must fail).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.test_deploy_files import DOCKERFILE, parse_dockerfile

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECK = REPO_ROOT / "deploy/image/check_cpu_torch.py"
IMAGE_CHECK = "/opt/check_cpu_torch.py"  # where the Dockerfile copies it


def run_check(stub_root: Path | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(stub_root) if stub_root else ""}
    return subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, env=env, timeout=120)


def stub_torch(root: Path, version: str, cuda: str | None) -> Path:
    """A `torch` package with only what the check reads: __version__ and version.cuda."""
    package = root / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"from torch import version\n__version__ = {version!r}\n")
    (package / "version.py").write_text(f"__version__ = {version!r}\ncuda = {cuda!r}\n")
    return root


@pytest.mark.parametrize(("version", "cuda", "named"), [
    ("2.13.0+cu130", "13.0", "CUDA build (torch.version.cuda = '13.0')"),
    ("2.13.0", "12.8", "CUDA build"),              # PyPI's default torch: no local label, CUDA inside
    ("2.13.0", None, "lacks the '+cpu' local version"),
])
def test_a_torch_that_is_not_the_cpu_build_fails_the_check_and_is_named(
        tmp_path: Path, version: str, cuda: str | None, named: str) -> None:
    result = run_check(stub_torch(tmp_path, version, cuda))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"torch {version}" in result.stderr and named in result.stderr, result.stderr


def test_a_cpu_torch_passes_the_check_stub_and_real(tmp_path: Path) -> None:
    stub = run_check(stub_torch(tmp_path, "2.13.0+cpu", None))
    assert stub.returncode == 0 and "torch 2.13.0+cpu (CPU build)" in stub.stdout, stub.stdout + stub.stderr
    real = run_check(None)  # this venv's torch: the pinned CPU wheel
    assert real.returncode == 0, real.stdout + real.stderr


def test_dockerfile_runs_the_check_after_torch_and_again_after_the_package() -> None:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    builder = next(stage for stage in stages if any("pip install torch==" in run for run in stage.all("RUN")))
    runs = builder.all("RUN")
    torch_at = next(i for i, run in enumerate(runs) if "pip install torch==" in run)
    package_at = next(i for i, run in enumerate(runs) if "pip install '." in run)
    checks = [i for i, run in enumerate(runs) if f"python {IMAGE_CHECK}" in run]
    assert checks and checks[0] == torch_at + 1, runs  # before anything else is installed
    assert package_at in checks, "the package's install may replace torch: check it again in the same step"
    assert any(f"deploy/image/check_cpu_torch.py {IMAGE_CHECK}" in copy for copy in builder.all("COPY"))
