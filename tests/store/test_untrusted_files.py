"""Loading an artifact never runs code from it: no unpickling, no guard source, no unknown operators."""

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from service.store import ArtifactError, load_artifact
from service.store.manifest import PROGRAM_FILE, WEIGHTS_FILE
from tests.security.hostile_artifacts import edit_program, rehash
from tests.small_artifacts import save_small_mmoe


class _Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_small_mmoe(tmp_path_factory.mktemp("store"), "ranker")


@pytest.fixture
def version_dir(saved: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ranker" / "v1"
    shutil.copytree(saved, copy)
    return copy


def test_a_pickle_planted_as_the_weights_is_refused_without_running(version_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (version_dir / WEIGHTS_FILE).write_bytes(pickle.dumps(_Payload(marker)))
    rehash(version_dir)
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_artifact(version_dir)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live: unpickling it does create the marker
    assert marker.exists()


def test_a_torch_export_archive_planted_as_the_program_is_refused_without_running(
    version_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    (version_dir / PROGRAM_FILE).write_bytes(pickle.dumps(_Payload(marker)))
    rehash(version_dir)
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(version_dir)
    assert not marker.exists()


def test_guard_code_in_the_program_is_refused_without_running(version_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    edit_program(version_dir, lambda p: p.update(guards_code=[f"__import__('os').system('touch {marker}')"]))
    with pytest.raises(ArtifactError, match="guards_code"):
        load_artifact(version_dir)
    assert not marker.exists()


def test_operators_outside_the_allowed_namespaces_are_refused(version_dir: Path) -> None:
    def call_exec(program: dict) -> None:
        program["graph_module"]["graph"]["nodes"][0]["target"] = "builtins.exec"

    edit_program(version_dir, call_exec)
    with pytest.raises(ArtifactError, match="builtins.exec"):
        load_artifact(version_dir)


def test_value_names_that_are_not_identifiers_are_refused(version_dir: Path) -> None:
    def inject(program: dict) -> None:
        node = program["graph_module"]["graph"]["nodes"][0]
        node["outputs"][0]["as_tensor"]["name"] = "x = __import__('os')"

    edit_program(version_dir, inject)
    with pytest.raises(ArtifactError, match="not an identifier"):
        load_artifact(version_dir)


def test_loading_never_unpickles(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("an artifact load tried to unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    loaded = load_artifact(saved)
    assert loaded.manifest.name == "ranker"
