"""Shared by every test folder."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from service.features.schema import FeatureSchema

SMALL_MODEL_NAME = "default"
# Settings built in a test compile nothing unless the test says so (RANKER_COMPILE's default, auto, runs inductor
# for seconds to minutes per build: nothing most tests assert); tests/serving/test_compile.py sets it itself.
os.environ.setdefault("RANKER_COMPILE", "off")
MAX_AUTO_WORKERS = 8  # each worker holds torch, its own trained session store and the servers its tests start


def pytest_configure(config: pytest.Config) -> None:
    _share_httpx_default_ssl_context()


def _share_httpx_default_ssl_context() -> None:
    """Build httpx's default SSL context once per test process instead of once per httpx.get/post and Client.

    httpx makes a fresh SSLContext and loads certifi's CA bundle into it for every top-level call and every
    Client: ~30 ms of CPU each (twice that on a busy machine), though tests only speak plain HTTP to 127.0.0.1.
    tests/api/test_fleet.py, tests/faults and tests/api/test_server.py alone made 2,371 of them: over
    a minute of CPU in the test process, beside the servers it drives. The context built for the default arguments
    (verify=True, no client certificate, the environment trusted) is the one httpx would build every time,
    and an SSLContext may be shared by any number of connections and threads; any other arguments get their
    own, as before (httpcore sets ALPN on the context of an https connection it opens: no test opens one).
    httpx has no public switch for this, hence its transport module's function is wrapped."""
    import httpx._transports.default as transport

    build = transport.create_ssl_context
    shared: list[Any] = []

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is not True or cert is not None or not trust_env:
            return build(verify=verify, cert=cert, trust_env=trust_env)
        if not shared:
            shared.append(build())
        return shared[0]

    transport.create_ssl_context = create_ssl_context


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject.toml's addopts): one xdist worker per CPU this process may run on (the affinity mask,
    not the machine's count, as a container or `taskset` sees it), at most MAX_AUTO_WORKERS. (A third worker on the
    2-core machine made the suite slower: 841 s of pytest against 787 s with two.)"""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, MAX_AUTO_WORKERS))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest test files first (tests/durations.py: why, and how to refresh the seconds), so that no worker
    starts a minute-long file while the others have nothing left; a file's tests keep their order."""
    from tests.durations import longest_first

    items[:] = longest_first(items)


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
    """A model_store with a small trained MMoE as default/v1 and default/v2 (different seeds: different scores).

    Each process gets its own copy (tests write into their store), trained once per test session (_trained_store)."""
    root = tmp_path_factory.mktemp("model_store")
    shutil.copytree(_trained_store(tmp_path_factory), root, dirs_exist_ok=True)
    return root


def _trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two small MMoEs, trained (~11 s) by the first process of the session that needs them, not by every
    pytest-xdist worker: pytest-xdist's recipe for session data, a folder that the session's workers share (their
    basetemps' parent), guarded by a file lock. Trained into a temporary folder and renamed into place, so no
    process ever sees a half-written store, and a process that died training leaves nothing that counts. Without
    xdist the session's own basetemp: the parent of a plain session's basetemp is pytest's folder for every session
    of this user (older ones, concurrent ones), whose store could be stale."""
    from filelock import FileLock

    from tests.small_artifacts import save_small_mmoe  # trains: imported only by tests that need a store

    basetemp = tmp_path_factory.getbasetemp()
    session = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp
    trained = session / "trained_model_store"
    with FileLock(str(session / "trained_model_store.lock")):
        if not trained.is_dir():
            building = Path(tempfile.mkdtemp(prefix="trained_model_store.", dir=session))
            try:
                for version, seed in (("v1", 1), ("v2", 2)):
                    save_small_mmoe(building, SMALL_MODEL_NAME, version, seed)
                building.rename(trained)
            finally:
                shutil.rmtree(building, ignore_errors=True)  # gone after the rename; what a failure left
    return trained


@pytest.fixture(scope="session")
def schema(store: Path) -> FeatureSchema:
    """The feature schema of the small stored model."""
    from service.store.artifact import load_artifact

    return load_artifact(store / SMALL_MODEL_NAME / "v1").schema
