"""Shared by every test folder."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from service.features.schema import FeatureSchema

SMALL_MODEL_NAME = "default"
# Settings built in a test compile nothing unless the test says so (RANKER_COMPILE's default, auto, runs inductor
# for seconds to minutes per build: nothing most tests assert); tests/serving/test_compile.py sets it itself.
os.environ.setdefault("RANKER_COMPILE", "off")
MAX_AUTO_WORKERS = 8  # each worker holds torch, its own trained session store and the servers its tests start


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject.toml's addopts): one xdist worker per CPU this process may run on (the affinity mask,
    not the machine's count, as a container or `taskset` sees it), at most MAX_AUTO_WORKERS."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, MAX_AUTO_WORKERS))


@pytest.fixture(autouse=True)
def single_intra_op_thread() -> Iterator[None]:
    """Tiny test models gain nothing from intra-op threads, and on a busy 2-core box OpenMP spinning
    makes them tens of times slower; restore the process setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model_store with a small trained MMoE as default/v1 and default/v2 (different seeds: different scores)."""
    from tests.small_artifacts import save_small_mmoe  # trains: imported only by tests that need a store

    root = tmp_path_factory.mktemp("model_store")
    for version, seed in (("v1", 1), ("v2", 2)):
        save_small_mmoe(root, SMALL_MODEL_NAME, version, seed)
    return root


@pytest.fixture(scope="session")
def schema(store: Path) -> FeatureSchema:
    """The feature schema of the small stored model."""
    from service.store.artifact import load_artifact

    return load_artifact(store / SMALL_MODEL_NAME / "v1").schema
