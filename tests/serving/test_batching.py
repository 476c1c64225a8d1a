"""Micro-batching in the serving core: every variant of a stored model gets a batched form whose scores equal
each request scored alone, and one bad request in a batch fails alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.engine import Variant
from service.serving.loading import build_serving_model
from service.serving.metrics import ServiceMetrics
from service.serving.runtime import ModelRuntime
from service.serving.scorer import RequestScorer, _Prepared
from service.serving.serving_model import Scored
from tests.api.conftest import make_settings

SIZES = (1, 40, 7, 1, 120, 3)  # candidates of six requests of six users


@pytest.fixture(scope="module")
def serving(store: Path):
    return build_serving_model(make_settings(store, batching=True), store / "default" / "v1")


def _requests(serving, seed: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [serving.codec.schema.example_batch(n, generator) for n in SIZES]


@pytest.mark.parametrize("variant", list(Variant), ids=lambda v: v.value)
def test_every_variant_batches_and_scores_each_request_as_alone(serving, variant) -> None:
    batching = serving.statuses[variant].batching
    assert batching is not None and batching.batched and batching.user_side == "batch_m"
    requests = _requests(serving, seed=3)
    together = serving.score_batch(variant, requests)
    for features, scores, n in zip(requests, together, SIZES):
        alone = serving.score(variant, features)
        assert set(scores) == set(serving.tasks)
        for task in serving.tasks:
            assert scores[task].shape == (n,)
            assert (scores[task] - alone[task]).abs().max().item() <= 1e-5


def test_a_request_that_fails_in_a_batch_fails_alone(serving, store: Path) -> None:
    scorer = RequestScorer.__new__(RequestScorer)  # only _score_on_slot's metrics are needed
    scorer.metrics = ServiceMetrics()
    scorer.runtime = ModelRuntime(make_settings(store, batching=True))  # the served model's name (a metric label)
    requests = _requests(serving, seed=4)[:3]
    broken = dict(requests[1])
    broken.pop(next(iter(broken)))  # a feature missing: the model cannot run on it
    batch = [_Prepared(f"r{i}", serving, Variant.MARI, features, next(iter(features.values())).shape[0], None, 0.0,
                       0.0)
             for i, features in enumerate([requests[0], broken, requests[2]])]
    outcomes = scorer._score_on_slot(serving, batch)
    assert isinstance(outcomes[1], Exception)
    for i in (0, 2):
        alone = serving.score(Variant.MARI, requests[i])
        scored = outcomes[i]
        assert isinstance(scored, Scored)
        assert all(torch.equal(scored.scores[task], alone[task]) for task in serving.tasks)
