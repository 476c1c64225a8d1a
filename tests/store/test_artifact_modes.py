"""A packaged version is readable by any user: files 0644 and folders 0755 under umask 022, less whatever the
umask removes (what a plain open() or mkdir gives), so a store packaged on a host and mounted into the non-root
image is served. The server test runs a real `ranker serve` as uid 65534 on a store packaged by this process."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch

from service.features.schema import FeatureSchema, Kind
from service.serving.example_request import example_request
from service.store import ArtifactError, load_artifact, package
from service.store import artifact as artifact_module
from service.store.manifest import WEIGHTS_FILE
from tests.ports import free_port
from tests.store.faulty_rankers import SCHEMA, Ranker, example
from tests.store.my_ranker import build

REPO_ROOT = Path(__file__).resolve().parents[2]
OTHER_UID = 65534  # nobody: no group or ownership in common with the files this process writes
READY_TIMEOUT_S = 240.0  # a bound, not an expectation: the machine may be running other suites
TOLERANCE = 1e-5
SERVE = ("import site, sys; site.addsitedir(sys.argv[1]); sys.argv = ['ranker', *sys.argv[2:]]; "
         "from service.cli import main; sys.exit(main())")


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of root and of everything under it, by path relative to root."""
    return {str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode) for path in [root, *root.rglob("*")]}


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)],
                         ids=["umask 022", "umask 077"])
def test_packaged_files_get_the_modes_a_plain_open_gives_under_the_umask(tmp_path: Path, mask: int, file_mode: int,
                                                                         folder_mode: int) -> None:
    store = tmp_path / "store"
    with _umask(mask):
        package(Ranker().eval(), example(), SCHEMA, tasks=["click"], scores="logit", store=store, name="m")
    assert _modes(store) == {".": folder_mode, "m": folder_mode, "m/v1": folder_mode, "m/v1/model.json": file_mode,
                             "m/v1/program.json": file_mode, "m/v1/weights.safetensors": file_mode}


def _reachable_by_others(path: Path) -> bool:
    """`path` can be opened by a user who is neither its owner nor in its group: every folder above it lets
    "other" through, and it lets "other" read."""
    path = path.resolve()
    return (all(folder.stat().st_mode & stat.S_IXOTH for folder in path.parents)
            and bool(path.stat().st_mode & stat.S_IROTH))


def _other_needs(path: Path) -> int:
    """The permission bits "other" needs: list and enter a folder, read a file."""
    return stat.S_IROTH | stat.S_IXOTH if path.is_dir() else stat.S_IROTH


def _python_for_others() -> str | None:
    """An interpreter of this Python version that the other uid can run, stdlib included (this venv's may live
    under a private home folder, e.g. pyenv's under /root)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    tried = []
    for candidate in dict.fromkeys([sys.executable, shutil.which(version, path=os.defpath)]):
        if candidate is None:
            continue
        probe = subprocess.run([candidate, "-c", "import sys, sysconfig; print(sysconfig.get_path('stdlib')); "
                                "print(*sys.version_info[:2])"], capture_output=True, text=True, timeout=60)
        stdlib, _, found = probe.stdout.strip().partition("\n")
        if found.split() == [str(part) for part in sys.version_info[:2]] and all(
                _reachable_by_others(Path(path)) for path in (candidate, stdlib)):
            return candidate
        tried.append(candidate)
    return None


def _code_reachable_by_others() -> bool:
    """The other uid can run this checkout's service: an interpreter, this venv's packages and the repository are
    outside private folders (a clone under a 0700 home is not: only the store's modes can be checked then)."""
    return (_python_for_others() is not None and _reachable_by_others(Path(sysconfig.get_path("purelib")))
            and _reachable_by_others(REPO_ROOT / "service" / "cli.py"))


def _eager_scores(model: torch.nn.Module, schema: FeatureSchema, body: dict) -> torch.Tensor:
    """The user's own model (logits) on the request, user features tiled: what the service must answer."""
    n = len(body["candidates"][schema.candidate_features[0].name])
    columns = {spec.name: [body["user"][spec.name]] * n if spec.is_user else body["candidates"][spec.name]
               for spec in schema.features}
    features = {spec.name: torch.tensor(columns[spec.name], dtype=torch.float32 if spec.kind is Kind.DENSE
                                        else torch.int64) for spec in schema.features}
    with torch.no_grad():
        return torch.sigmoid(model(features)[:, 0])


@contextmanager
def _serve_as_other_user(store: Path, home: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`ranker serve` on `store` as OTHER_UID; yields its URL once /readyz is 200, stops it with SIGTERM."""
    site_packages = sysconfig.get_path("purelib")
    python = _python_for_others()
    assert python is not None
    port = free_port()
    env = {"PATH": os.defpath, "PYTHONPATH": str(REPO_ROOT), "HOME": str(home), "RANKER_MODEL_STORE": str(store),
           "RANKER_MODEL_NAME": "my_ranker", "RANKER_COMPILE": "off", "RANKER_WARMUP_CANDIDATES": "[1, 16]",
           "RANKER_ANALYSIS_CANDIDATES": "100", "RANKER_TORCH_THREADS": "1", "RANKER_DRAIN_DELAY_S": "0"}
    command = [python, "-c", SERVE, site_packages, "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(home / "server.log", "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   user=OTHER_UID, group=OTHER_UID, extra_groups=[])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(url):
            assert process.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
            time.sleep(0.2)
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_store_packaged_here_is_served_by_a_server_running_as_another_user() -> None:
    """Not root (no other uid to run as), or this checkout in a private folder: the store must still be what
    that server needs, every folder traversable and every file readable by "other"."""
    root = Path(tempfile.mkdtemp(prefix="store-for-another-user-"))
    try:
        os.chmod(root, 0o755)  # mkdtemp's 0700 would stop the other user before the store
        model, features, schema, options = build(seed=2)
        with _umask(0o022):
            package(model, features, schema, store=root / "store", name="my_ranker", **options)
        store = root / "store"
        closed = {path: oct(mode) for path, mode in _modes(store).items()
                  if mode & _other_needs(store / path) != _other_needs(store / path)}
        assert not closed, f"not readable by other users: {closed}"
        if os.geteuid() != 0 or not _code_reachable_by_others():
            return  # the modes above are what such a server needs from the store
        with _serve_as_other_user(store, root) as (url, process):
            uids = Path(f"/proc/{process.pid}/status").read_text().split("Uid:")[1].split("\n")[0].split()
            assert uids == [str(OTHER_UID)] * 4
            body = example_request(schema, n=6, columnar=True, seed=3)
            response = httpx.post(f"{url}/rank", json=body, timeout=30)
            assert response.status_code == 200, response.text
            served = torch.tensor(response.json()["scores"]["click"])
            assert (served - _eager_scores(model, schema, body)).abs().max().item() <= TOLERANCE
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_file_the_server_may_not_read_is_one_artifact_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a server running as another user meets on a store packaged with private modes (root, which runs this
    suite, reads every file, so the refusal of the operating system is played by the reader)."""
    model, features, schema, options = build(seed=3)
    package(model, features, schema, store=tmp_path, name="my_ranker", **options)

    readable = artifact_module.sha256_file

    def weights_refused(path: Path) -> str:
        if path.name == WEIGHTS_FILE:
            raise PermissionError(13, "Permission denied", str(path))
        return readable(path)

    monkeypatch.setattr(artifact_module, "sha256_file", weights_refused)
    with pytest.raises(ArtifactError) as raised:
        load_artifact(tmp_path / "my_ranker")
    message = str(raised.value)
    assert "\n" not in message and message.endswith(f"{WEIGHTS_FILE}: cannot be read (Permission denied)")
