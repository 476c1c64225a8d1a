"""Shadow mode: re-score a sample of live requests on another variant, off the critical path, and compare.

The primary response never waits: a sampled request is put on a bounded queue (dropped and counted when
full) and one background thread scores it on the shadow variant. Scores are compared under
docs/ARCHITECTURE.md section 3 (service.engine.equivalence): every candidate and task within `tolerance`,
and the order by final score the same except between candidates whose primary final scores differ by less
than the tolerance. Each mismatch is logged with the request id and the largest difference.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from torch import Tensor

from service.engine import Variant
from service.engine.equivalence import compare
from service.serving.background import BackgroundWorker
from service.serving.metrics import ServiceMetrics
from service.serving.serving_model import ServingModel

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ShadowJob:
    request_id: str
    serving: ServingModel
    primary: Variant
    shadow: Variant
    features: dict[str, Tensor]
    primary_scores: dict[str, Tensor]


class ShadowComparator:
    """Samples requests onto a bounded queue; a background thread scores them on the shadow variant.

    The variant and the sample rate change with the fleet config (`configure`); the thread runs from
    `start` to `stop` whether or not sampling is on, and each job names the variant it was sampled for.
    """

    def __init__(
        self, variant: Variant | None, sample_rate: float, queue_size: int, tolerance: float,
        metrics: ServiceMetrics, *, model: str,
    ) -> None:
        self.model = model  # the served name: the `model` label of the comparison metrics
        self._sampling: tuple[Variant | None, float] = (None, 0.0)
        self.configure(variant, sample_rate)
        self.tolerance = tolerance
        self.metrics = metrics
        self._random = random.Random()
        self._worker: BackgroundWorker[ShadowJob] = BackgroundWorker(
            "shadow-comparator", queue_size, self._compare, metrics.shadow_dropped.inc,
            lambda job: f"request {job.request_id}")

    @property
    def variant(self) -> Variant | None:
        return self._sampling[0]

    @property
    def sample_rate(self) -> float:
        return self._sampling[1]

    @property
    def enabled(self) -> bool:
        return self.variant is not None and self.sample_rate > 0

    def configure(self, variant: Variant | None, sample_rate: float) -> None:
        """Shadow `variant` on `sample_rate` of requests from now on (one assignment: never half-switched)."""
        self._sampling = (variant, sample_rate if variant is not None else 0.0)

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._worker.stop(timeout_s)

    def sample(self, primary: Variant) -> Variant | None:
        """The variant to copy this request to, or None (not sampled, or the shadow served it already)."""
        variant, rate = self._sampling
        if variant is None or variant == primary or rate <= 0 or self._random.random() >= rate:
            return None
        return variant

    def submit(self, job: ShadowJob) -> bool:
        """Queue a job without blocking; False (and counted as dropped) when the queue is full."""
        return self._worker.submit(job)

    def _compare(self, job: ShadowJob) -> None:
        shadow_scores = job.serving.score(job.shadow, job.features)
        result = compare(shadow_scores, job.primary_scores, self.tolerance, rank_by=job.serving.final_scores)
        self.metrics.observe_shadow(self.model, job.primary.value, job.shadow.value, result.max_difference,
                                    not result.equivalent)
        if not result.equivalent:
            logger.warning(
                "shadow mismatch request_id=%s model=%s/%s primary=%s shadow=%s max_abs_difference=%.3g "
                "ranking_agrees=%s tolerance=%g",
                job.request_id, job.serving.name, job.serving.version, job.primary.value, job.shadow.value,
                result.max_difference, result.rankings_agree, self.tolerance,
            )
