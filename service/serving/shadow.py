"""Shadow mode: re-score a sample of live requests on another variant, off the critical path, and compare.

The primary response never waits: a sampled request is put on a bounded queue (dropped and counted when
full) and one background thread scores it on the shadow variant. Scores are compared under
docs/ARCHITECTURE.md section 3 (service.engine.equivalence): every candidate and task within `tolerance`,
and the order by final score the same except between candidates whose primary final scores differ by less
than the tolerance. Each mismatch is logged with the request id and the largest difference.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from dataclasses import dataclass

from torch import Tensor

from service.engine import Variant
from service.engine.equivalence import compare
from service.serving.metrics import ServiceMetrics
from service.serving.runtime import ServingModel

logger = logging.getLogger(__name__)

_STOP = object()


@dataclass(frozen=True)
class ShadowJob:
    request_id: str
    serving: ServingModel
    primary: Variant
    features: dict[str, Tensor]
    primary_scores: dict[str, Tensor]


class ShadowComparator:
    """Samples requests onto a bounded queue; a background thread scores them on the shadow variant."""

    def __init__(
        self, variant: Variant | None, sample_rate: float, queue_size: int, tolerance: float,
        metrics: ServiceMetrics,
    ) -> None:
        self.variant = variant
        self.sample_rate = sample_rate if variant is not None else 0.0
        self.tolerance = tolerance
        self.metrics = metrics
        self._queue: queue.Queue[ShadowJob | object] = queue.Queue(maxsize=queue_size)
        self._random = random.Random()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.variant is not None and self.sample_rate > 0

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shadow-comparator", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            pass  # daemon thread: it dies with the process
        self._thread.join(timeout_s)
        self._thread = None

    def wants(self, primary: Variant) -> bool:
        """Whether to copy this request (sampled, and the shadow differs from the variant that served it)."""
        return self.enabled and primary != self.variant and self._random.random() < self.sample_rate

    def submit(self, job: ShadowJob) -> bool:
        """Queue a job without blocking; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            self.metrics.shadow_dropped.inc()
            return False

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if not isinstance(job, ShadowJob):  # the stop marker
                return
            try:
                self._compare(job)
            except Exception:  # a shadow failure must never take anything else down
                logger.exception("shadow comparison failed for request %s", job.request_id)

    def _compare(self, job: ShadowJob) -> None:
        assert self.variant is not None
        shadow_scores = job.serving.score(self.variant, job.features)
        result = compare(shadow_scores, job.primary_scores, self.tolerance, rank_by=job.serving.final_scores)
        self.metrics.observe_shadow(job.primary.value, self.variant.value, result.max_difference, not result.equivalent)
        if not result.equivalent:
            logger.warning(
                "shadow mismatch request_id=%s model=%s/%s primary=%s shadow=%s max_abs_difference=%.3g "
                "ranking_agrees=%s tolerance=%g",
                job.request_id, job.serving.name, job.serving.version, job.primary.value, self.variant.value,
                result.max_difference, result.rankings_agree, self.tolerance,
            )
