"""Shadow mode: comparisons under docs/ARCHITECTURE.md section 3, mismatches counted and logged, drops when the
queue is full."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.metrics import ServiceMetrics
from service.api.shadow import ShadowComparator, ShadowJob, compare_scores
from service.engine import Variant
from tests.api.conftest import make_settings, rank_body
from tests.api.metrics_text import parse_metrics, total, value

TASKS = ("a", "b")
WEIGHTS = torch.tensor([1.0, 0.5])


def scores(a: list[float], b: list[float]) -> dict[str, torch.Tensor]:
    return {"a": torch.tensor(a), "b": torch.tensor(b)}


def test_scores_within_tolerance_match_and_ties_may_swap() -> None:
    primary = scores([0.5, 0.5000001, 0.2], [0.1, 0.1, 0.3])
    shadow = scores([0.5000001, 0.5, 0.2], [0.1, 0.1, 0.3000004])
    result = compare_scores(primary, shadow, WEIGHTS, TASKS, tolerance=1e-5)
    assert not result.mismatched and result.ranking_agrees
    assert result.max_abs_difference == pytest.approx(4e-7, abs=1e-7)


def test_a_score_off_by_more_than_the_tolerance_is_a_mismatch() -> None:
    primary = scores([0.5, 0.4], [0.1, 0.1])
    result = compare_scores(primary, scores([0.5, 0.4001], [0.1, 0.1]), WEIGHTS, TASKS, tolerance=1e-5)
    assert result.mismatched and result.max_abs_difference == pytest.approx(1e-4, rel=1e-3)


def test_missing_tasks_or_nan_scores_are_mismatches() -> None:
    primary = scores([0.5, 0.4], [0.1, 0.1])
    assert compare_scores(primary, {"a": torch.tensor([0.5, 0.4])}, WEIGHTS, TASKS, 1e-5).mismatched
    nan = compare_scores(primary, scores([float("nan"), 0.4], [0.1, 0.1]), WEIGHTS, TASKS, 1e-5)
    assert nan.mismatched and nan.max_abs_difference == float("inf")


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    metrics = ServiceMetrics()
    comparator = ShadowComparator(Variant.VANI, 1.0, queue_size=2, tolerance=1e-5, metrics=metrics)  # not started
    job = ShadowJob("r", None, Variant.MARI, {}, {})  # type: ignore[arg-type]
    assert [comparator.submit(job) for _ in range(5)] == [True, True, False, False, False]
    assert value(parse_metrics(metrics.exposition()[0].decode()), "ranker_shadow_dropped_total") == 3


def test_a_deliberately_wrong_shadow_is_counted_and_logged_with_the_request_id(
    store: Path, schema, caplog: pytest.LogCaptureFixture
) -> None:
    def wrong(shadow_scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {task: (score + 1e-3).clamp(max=1.0) for task, score in shadow_scores.items()}

    settings = make_settings(store, model_version="v1", shadow_variant="vani", shadow_sample_rate=1.0)
    app = create_app(settings, shadow_score_hook=wrong)
    with TestClient(app) as client, caplog.at_level(logging.WARNING, logger="service.api.shadow"):
        for seed in range(3):
            body = rank_body(schema, n=20, seed=seed, request_id=f"shadow-{seed}")
            assert client.post("/rank", json=body).status_code == 200
        assert app.state.ranker.shadow.wait_idle(20)
        samples = parse_metrics(client.get("/metrics").text)
    assert value(samples, "ranker_shadow_comparisons_total", primary="mari", shadow="vani") == 3
    assert value(samples, "ranker_shadow_mismatches_total", primary="mari", shadow="vani") == 3
    assert value(samples, "ranker_shadow_max_abs_difference") > 1e-5
    assert total(samples, "ranker_shadow_dropped_total") == 0
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert all(f"request_id=shadow-{seed}" in logged for seed in range(3))


def test_normal_variants_show_no_shadow_mismatch(client: TestClient, schema) -> None:
    for seed in range(3):
        assert client.post("/rank", json=rank_body(schema, n=50, seed=seed)).status_code == 200
    assert client.app.state.ranker.shadow.wait_idle(20)
    samples = parse_metrics(client.get("/metrics").text)
    assert total(samples, "ranker_shadow_comparisons_total") >= 3
    assert total(samples, "ranker_shadow_mismatches_total") == 0
    assert value(samples, "ranker_shadow_max_abs_difference") <= 1e-5
