"""Compare model versions on live traffic: re-score a sample of requests on a second version, off the critical
path, and record how far the two rankings agree (service/serving/agreement.py).

While a canary splits the traffic (serving.json `versions`), `compare.sample_rate` of the requests are copied to
a bounded queue (dropped and counted when full); one background thread scores each on the other version: the
primary when a canary served it, else the canary of largest weight, with the variant that served it. The
primary's scores are the reference of every measure, whichever version served. Different models may disagree:
nothing here is a mismatch and nothing alarms, unless `compare.min_overlap` is set and a comparison's top-k
overlap falls below it (counted, and logged with the request id).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from service.engine import Variant
from service.serving.agreement import Agreement, agreement
from service.serving.background import BackgroundWorker
from service.serving.fleet_config import CompareConfig
from service.serving.metrics import ServiceMetrics
from service.serving.runtime import ServingNow
from service.serving.serving_model import ServingModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionJob:
    """A request scored on `served`, to score on `other` and compare; `decode` re-reads its body with `other`'s
    codec when the two versions' feature schemas differ (None: the same features serve both)."""

    request_id: str
    primary: str  # the fleet's primary version: the reference of the comparison
    served: ServingModel
    other: ServingModel
    variant: Variant
    features: dict[str, Tensor]
    scores: dict[str, Tensor]
    compare: CompareConfig
    decode: Callable[[ServingModel], dict[str, Tensor]] | None = None


@dataclass
class PairSummary:
    """The running summary of one (primary, other) pair since this process applied it, for /v1/models."""

    count: int = 0
    overlap_sum: float = 0.0
    tau_sum: float = 0.0
    tau_count: int = 0
    last_difference_p90: float | None = None

    def add(self, result: Agreement) -> None:
        self.count += 1
        self.overlap_sum += result.overlap
        if result.kendall_tau is not None:
            self.tau_sum += result.kendall_tau
            self.tau_count += 1
        self.last_difference_p90 = result.difference_p90

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count, "mean_topk_overlap": self.overlap_sum / self.count if self.count else None,
            "mean_kendall_tau": self.tau_sum / self.tau_count if self.tau_count else None,
            "last_score_difference_p90": self.last_difference_p90,
        }


def other_version(active: ServingNow, served: ServingModel) -> ServingModel | None:
    """What a request `served` by one version is compared with: the primary when a canary served it, else the
    canary of largest weight (ties: by name); None when only one version serves."""
    if served is not active.serving:
        return active.serving
    router = active.version_router
    others = {name: model for name, model in active.serving_versions().items() if model is not active.serving}
    if router is None or not others:
        return None
    largest = max(others, key=lambda name: (router.shares.get(name, 0.0), name))
    return others[largest]


class VersionComparator:
    """Samples requests onto a bounded queue; a background thread scores them on another version and records
    the agreement as metrics and a per-pair running summary. The sample rate is the serving generation's
    (`ServingNow.compare`): it changes with the fleet config, never half-switched."""

    def __init__(self, queue_size: int, metrics: ServiceMetrics, model: str) -> None:
        self.metrics = metrics
        self.model = model  # the served name: the `model` label of every comparison metric
        self._random = random.Random()
        self._worker: BackgroundWorker[VersionJob] = BackgroundWorker(
            "version-comparator", queue_size, self.compare, metrics.version_compare_dropped.inc,
            lambda job: f"request {job.request_id}")
        self._summaries: dict[tuple[str, str], PairSummary] = {}
        self._lock = threading.Lock()  # the summaries: written by the thread, read by /v1/models

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._worker.stop(timeout_s)

    def sample(self, active: ServingNow, served: ServingModel) -> ServingModel | None:
        """The version to compare this request with, or None (not sampled, or only one version serves)."""
        rate = active.compare.sample_rate
        if rate <= 0 or self._random.random() >= rate:
            return None
        return other_version(active, served)

    def submit(self, job: VersionJob) -> bool:
        """Queue a job without blocking; False (and counted as dropped) when the queue is full."""
        return self._worker.submit(job)

    def summary(self) -> dict[str, Any]:
        """Per '<primary> vs <other>': count, mean top-k overlap, mean Kendall tau, last p90 score difference
        (this process's comparisons since it started)."""
        with self._lock:
            return {f"{primary} vs {other}": pair.to_dict() for (primary, other), pair in self._summaries.items()}

    def compare(self, job: VersionJob) -> Agreement:
        """Score `job` on the other version and record how far the two agree (the thread's work)."""
        features = job.features if job.decode is None else job.decode(job.other)
        other_scores = job.other.score(job.variant, features)
        served_final = job.served.final_scores(job.scores).numpy()
        other_final = job.other.final_scores(other_scores).numpy()
        if job.served.version == job.primary:
            result, pair = agreement(served_final, other_final, job.compare.top_k), (job.primary, job.other.version)
        else:
            result, pair = agreement(other_final, served_final, job.compare.top_k), (job.primary, job.served.version)
        self._record(pair, result, job)
        return result

    def _record(self, pair: tuple[str, str], result: Agreement, job: VersionJob) -> None:
        labels = {"model": self.model, "primary_version": pair[0], "other_version": pair[1]}
        self.metrics.version_comparisons.labels(**labels).inc()
        self.metrics.version_topk_overlap.labels(**labels).observe(result.overlap)
        if result.kendall_tau is not None:
            self.metrics.version_kendall_tau.labels(**labels).observe(result.kendall_tau)
        if result.spearman_rho is not None:
            self.metrics.version_spearman.labels(**labels).observe(result.spearman_rho)
        self.metrics.version_score_difference.labels(**labels).observe(result.difference_p90)
        bound = job.compare.min_overlap
        if bound is not None:
            disagreements = self.metrics.version_disagreements.labels(**labels)  # the series exists at 0
            if result.overlap < bound:
                disagreements.inc()
                logger.warning("version disagreement request_id=%s primary=%s other=%s topk_overlap=%.3f "
                               "min_overlap=%g k=%d", job.request_id, pair[0], pair[1], result.overlap, bound,
                               result.k)
        with self._lock:
            self._summaries.setdefault(pair, PairSummary()).add(result)
