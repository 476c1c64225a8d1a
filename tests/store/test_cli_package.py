"""`ranker package`, `ranker example-request --model` and `ranker convert`, run as a user runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from service.models import ARCHITECTURES
from service.store import ArtifactError, load_artifact
from service.store.artifact import sha256_file
from tests.models.small_configs import small_config
from tests.tiling import tile_user_features

REPO_ROOT = Path(__file__).resolve().parents[2]


def _ranker(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_package_command_writes_an_artifact_and_prints_what_mari_split(tmp_path: Path) -> None:
    done = _ranker("package", "tests/store/my_ranker.py:build", "--name", "my_ranker", "--store", str(tmp_path),
                   "--n", "100")
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'my_ranker' / 'v1'}" in done.stdout
    assert "mari" in done.stdout.lower() and "FLOPs" in done.stdout
    loaded = load_artifact(tmp_path / "my_ranker")
    assert loaded.manifest.tasks == ["click", "like"] and loaded.manifest.outputs["scores"] == "logit"

    example = _ranker("example-request", "--model", str(tmp_path / "my_ranker"), "--n", "3", "--columnar")
    assert example.returncode == 0, example.stderr
    body = json.loads(example.stdout)
    assert set(body["user"]) == {"user_id", "user_city", "user_dense"}
    assert set(body["candidates"]) == {"item_id", "item_category", "item_dense"}
    assert len(body["candidates"]["item_id"]) == 3


def test_package_command_reports_a_bad_reference_without_a_traceback(tmp_path: Path) -> None:
    for reference, message in (("tests/store/absent.py:build", "no such file"),
                               ("tests/store/my_ranker.py:nothing", "no function 'nothing'"),
                               ("tests/store/my_ranker.py", "expected path/to/file.py:function")):
        done = _ranker("package", reference, "--name", "x", "--store", str(tmp_path))
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr


def _write_format_1(store: Path) -> tuple[Path, torch.nn.Module]:
    """A version folder exactly as the previous release wrote it: architecture name + safetensors weights."""
    config = small_config("dcn")
    torch.manual_seed(5)
    model = ARCHITECTURES["dcn"].build(config).eval()
    folder = store / "old" / "v3"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "weights.safetensors")
    manifest = {
        "name": "old", "version": "v3", "architecture": "dcn", "hyper_parameters": config.to_dict(),
        "feature_schema": config.schema().to_dict(), "tasks": list(config.tasks),
        "task_weights": config.weights_by_task(), "weights_sha256": sha256_file(folder / "weights.safetensors"),
        "metrics": {"holdout_auc": {"click": 0.7}}, "created_at": "2026-11-01T00:00:00+00:00",
        "weights_file": "weights.safetensors", "format_version": 1,
    }
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder, model


def test_a_format_1_artifact_is_refused_with_the_command_that_converts_it(tmp_path: Path) -> None:
    folder, model = _write_format_1(tmp_path)
    with pytest.raises(ArtifactError, match=f"ranker convert {folder}"):
        load_artifact(folder)
    done = _ranker("convert", str(folder))
    assert done.returncode == 0, done.stderr
    loaded = load_artifact(folder)
    assert loaded.manifest.version == "v3" and loaded.manifest.metrics == {"holdout_auc": {"click": 0.7}}
    assert loaded.manifest.source["architecture"] == "dcn"
    features = tile_user_features(loaded.schema, loaded.schema.example_batch(50, torch.Generator().manual_seed(2)), 50)
    with torch.no_grad():
        want, got = model(features), loaded.model(features)
    assert all(torch.allclose(want[t], got[t], atol=1e-6, rtol=0) for t in want)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["v3"]  # no staging or retired folders left
