"""Fixtures: a small trained model store (built once per session) and an in-process app on it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.config import Settings
from service.api.example_request import example_request
from service.features.schema import FeatureSchema
from service.store.artifact import load_artifact
from tests.small_artifacts import save_small_mmoe

MODEL_NAME = "default"
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


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model_store with default/v1 and default/v2 (different seeds: different scores)."""
    root = tmp_path_factory.mktemp("model_store")
    for version, seed in (("v1", 1), ("v2", 2)):
        save_small_mmoe(root, MODEL_NAME, version, seed)
    return root


@pytest.fixture(scope="session")
def schema(store: Path) -> FeatureSchema:
    return load_artifact(store / MODEL_NAME / "v1").schema


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
def client(store: Path) -> Iterator[TestClient]:
    """In-process app on v1 (lifespan run: model built and warmed), admin on, shadow VanI for every request."""
    settings = make_settings(store, model_version="v1", shadow_variant="vani", shadow_sample_rate=1.0)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def rank_body(schema: FeatureSchema, n: int = 20, columnar: bool = True, seed: int = 0, **extra: Any) -> dict:
    return {**example_request(schema, n=n, columnar=columnar, seed=seed), **extra}
