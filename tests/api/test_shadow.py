"""Shadow mode over HTTP: comparisons under docs/ARCHITECTURE.md section 3, mismatches counted and logged.

The comparison rule itself is tested in tests/engine/test_equivalence_policy.py, the queue in
tests/serving/test_shadow.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.engine import Variant
from service.serving.serving_model import ServingModel
from tests.api.conftest import MODEL_NAME, make_settings, rank_body
from tests.api.metrics_text import Samples, parse_metrics, total, value

COMPARED_TIMEOUT_S = 60.0  # bounds the wait only: the comparisons run in the background, slower on a busy machine


def wait_for_comparisons(client: TestClient, count: int) -> Samples:
    """/metrics once at least `count` shadow comparisons are done (they run in the background)."""
    deadline = time.monotonic() + COMPARED_TIMEOUT_S
    while True:
        samples = parse_metrics(client.get("/metrics").text)
        if total(samples, "ranker_shadow_comparisons_total") >= count or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_a_deliberately_wrong_shadow_is_counted_and_logged_with_the_request_id(
    store: Path, schema, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    score = ServingModel.score

    def wrong_vani(self: ServingModel, variant: Variant, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scores = score(self, variant, features)  # MaRI serves; only the VanI shadow is off by 1e-3
        return {task: (s + 1e-3).clamp(max=1.0) for task, s in scores.items()} if variant is Variant.VANI else scores

    monkeypatch.setattr(ServingModel, "score", wrong_vani)
    settings = make_settings(store, model_version="v1", variant="mari", shadow_variant="vani", shadow_sample_rate=1.0)
    with TestClient(create_app(settings)) as client, caplog.at_level(logging.WARNING, logger="service.serving.shadow"):
        for seed in range(3):
            body = rank_body(schema, n=20, seed=seed, request_id=f"shadow-{seed}")
            assert client.post("/rank", json=body).status_code == 200
        samples = wait_for_comparisons(client, 3)
    assert value(samples, "ranker_shadow_comparisons_total", model=MODEL_NAME, primary="mari", shadow="vani") == 3
    assert value(samples, "ranker_shadow_mismatches_total", model=MODEL_NAME, primary="mari", shadow="vani") == 3
    assert value(samples, "ranker_shadow_max_abs_difference") > 1e-5
    assert total(samples, "ranker_shadow_dropped_total") == 0
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert all(f"request_id=shadow-{seed}" in logged for seed in range(3))


def test_normal_variants_show_no_shadow_mismatch(client: TestClient, schema) -> None:
    for seed in range(3):
        assert client.post("/rank", json=rank_body(schema, n=50, seed=seed)).status_code == 200
    samples = wait_for_comparisons(client, 3)
    assert total(samples, "ranker_shadow_comparisons_total") >= 3
    assert total(samples, "ranker_shadow_mismatches_total") == 0
    assert value(samples, "ranker_shadow_max_abs_difference") <= 1e-5
