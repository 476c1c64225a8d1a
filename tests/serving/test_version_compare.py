"""The version comparison's own rules, on stand-in models (what it needs of a ServingModel: a version, scores,
final scores): which version a request is compared with, what is recorded, when a disagreement counts, drops;
and the scorer's choice of codec when a canary reads other features."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import torch

from service.engine import Variant
from service.serving.fleet_config import CompareConfig
from service.serving.metrics import ServiceMetrics
from service.serving.routing import VariantRouter, VersionRouter
from service.serving.runtime import ServingNow
from service.serving.scorer import Decoded, _prepare
from service.serving.serving_model import ServingModel
from service.serving.version_compare import VersionComparator, VersionJob, other_version


@dataclass(eq=False)
class StandIn:
    """A version that scores every request with fixed final scores (one task, weight 1)."""

    version: str
    final: torch.Tensor
    schema: str = "schema-a"

    @property
    def codec(self) -> SimpleNamespace:
        return SimpleNamespace(schema=self.schema)

    @property
    def fastest(self) -> SimpleNamespace:
        return SimpleNamespace(variant_for=lambda n: Variant.MARI)

    def score(self, variant: Variant, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"click": self.final.clone()}

    def final_scores(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        return scores["click"]


def serving_now(weights: dict[str, float], *models: StandIn, compare: CompareConfig | None = None) -> ServingNow:
    by_name = {model.version: cast(ServingModel, model) for model in models}
    return ServingNow(by_name[models[0].version], VariantRouter(Variant.MARI, {}), 1, by_name,
                      VersionRouter(models[0].version, weights), {}, compare or CompareConfig(sample_rate=1.0))


def sample(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    assert metrics.registry is not None
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_canary_is_compared_with_the_primary_and_the_primary_with_the_heaviest_canary() -> None:
    n = torch.zeros(3)
    v1, v2, v3 = StandIn("v1", n), StandIn("v2", n), StandIn("v3", n)
    active = serving_now({"v1": 0.8, "v2": 0.05, "v3": 0.15}, v1, v2, v3)
    assert other_version(active, cast(ServingModel, v2)) is v1
    assert other_version(active, cast(ServingModel, v1)) is v3
    alone = ServingNow(cast(ServingModel, v1), VariantRouter(Variant.MARI, {}), 1)
    assert other_version(alone, cast(ServingModel, v1)) is None
    comparator = VersionComparator(4, ServiceMetrics(), "m")
    assert comparator.sample(serving_now({"v1": 1, "v2": 1}, v1, v2, compare=CompareConfig()), v1) is None  # rate 0


def job(served: StandIn, other: StandIn, primary: str, compare: CompareConfig) -> VersionJob:
    return VersionJob("r1", primary, cast(ServingModel, served), cast(ServingModel, other), Variant.MARI, {},
                      served.score(Variant.MARI, {}), compare)


def test_a_comparison_records_agreement_with_the_primary_as_reference_and_counts_disagreement_only_below_a_bound(
) -> None:
    metrics = ServiceMetrics()
    comparator = VersionComparator(4, metrics, "m")
    primary, canary = StandIn("v1", torch.tensor([4.0, 3, 2, 1, 0])), StandIn("v2", torch.tensor([0.0, 1, 2, 3, 4]))
    unbounded = comparator.compare(job(canary, primary, "v1", CompareConfig(top_k=3)))
    assert unbounded.overlap == 1 / 3 and unbounded.kendall_tau == -1.0
    pair = {"model": "m", "primary_version": "v1", "other_version": "v2"}  # the canary served it: v1 vs v2
    assert sample(metrics, "ranker_version_comparisons_total", **pair) == 1
    assert sample(metrics, "ranker_version_disagreements_total", **pair) == 0
    bounded = CompareConfig(top_k=3, min_overlap=0.5)
    comparator.compare(job(primary, canary, "v1", bounded))
    comparator.compare(job(primary, primary, "v1", bounded))  # identical rankings: overlap 1, no disagreement
    assert sample(metrics, "ranker_version_comparisons_total", **pair) == 2
    assert sample(metrics, "ranker_version_disagreements_total", **pair) == 1
    assert sample(metrics, "ranker_version_topk_overlap_count", **pair) == 2
    summary = comparator.summary()["v1 vs v2"]
    assert summary["count"] == 2 and summary["mean_topk_overlap"] == 1 / 3 and summary["mean_kendall_tau"] == -1.0
    assert summary["last_score_difference_p90"] == float(np.quantile([4, 2, 0, 2, 4], 0.9))


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    metrics = ServiceMetrics()
    comparator = VersionComparator(1, metrics, "m")  # not started: nothing takes from the queue
    model = StandIn("v1", torch.zeros(2))
    assert comparator.submit(job(model, model, "v1", CompareConfig()))
    assert not comparator.submit(job(model, model, "v1", CompareConfig()))
    assert sample(metrics, "ranker_version_compare_dropped_total") == 1


class RecordingDoor:
    """Decodes any body to the same request of user `user`, noting which version's codec read it."""

    version = None  # names no version: the user's version serves

    def __init__(self, user: str) -> None:
        self.user = user
        self.read_by: list[str] = []

    def decode(self, serving: Any, body: bytes) -> Decoded[None]:
        self.read_by.append(serving.version)
        return Decoded({"x": torch.zeros(2)}, 2, self.user, None, None, 0.001, 0.002)


def test_a_canary_with_another_feature_schema_reads_the_request_with_its_own_codec() -> None:
    scores = torch.zeros(2)
    primary, same, other = StandIn("v1", scores), StandIn("v2", scores), StandIn("v3", scores, schema="schema-b")
    for canary, read_by in ((same, ["v1"]), (other, ["v1", "v3"])):
        active = serving_now({"v1": 0.0, canary.version: 1.0}, primary, canary)  # every user on the canary
        door = RecordingDoor("user-1")
        prepared = _prepare(active, cast(Any, door), b"{}", None)
        assert prepared.serving is canary and door.read_by == read_by
        assert prepared.decode == 0.001 * len(read_by)  # both reads are the request's decode time
