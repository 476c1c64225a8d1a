"""Fixtures: an in-process app on the small trained model store (tests/conftest.py builds it once)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.features.schema import FeatureSchema
from service.serving.example_request import example_request
from service.serving.settings import Settings
from tests.conftest import SMALL_MODEL_NAME as MODEL_NAME

ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def make_settings(store: Path, **overrides: Any) -> Settings:
    """Settings for a small model: short warm-up, small FLOPs report."""
    values: dict[str, Any] = {
        "model_store": store, "model_name": MODEL_NAME, "warmup_candidates": (1, 16), "analysis_candidates": 100,
        "admin_token": ADMIN_TOKEN, "torch_threads": 1,
    }
    values.update(overrides)
    return Settings(**values)


def private_store(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's store for tests that change the fleet config: admin calls write its
    serving.json, which every later app on the same store would follow."""
    root = tmp_path_factory.mktemp("private_store")
    shutil.copytree(store / MODEL_NAME, root / MODEL_NAME, ignore=shutil.ignore_patterns("serving.json", ".*"))
    return root


def corrupt_copy(store: Path, source: str, target: str) -> Path:
    """A copy of a version whose weights no longer match their sha256."""
    path = store / MODEL_NAME / target
    if not path.exists():
        shutil.copytree(store / MODEL_NAME / source, path)
        weights = path / "weights.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def client(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """In-process app on v1 (lifespan run: model built and warmed), admin on, MaRI shadowed by VanI on every
    request (MaRI named: the default, auto, may serve VanI itself, which is never shadowed); on its own copy of
    the store (its admin calls write serving.json)."""
    settings = make_settings(private_store(store, tmp_path_factory), model_version="v1", variant="mari",
                             shadow_variant="vani", shadow_sample_rate=1.0)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def rank_body(schema: FeatureSchema, n: int = 20, columnar: bool = True, seed: int = 0, **extra: Any) -> dict:
    return {**example_request(schema, n=n, columnar=columnar, seed=seed), **extra}
