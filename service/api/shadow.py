"""Shadow mode: re-score a sample of live requests on another variant, off the critical path, and compare.

The primary response never waits: a sampled request is put on a bounded queue (dropped and counted when
full) and one background thread scores it on the shadow variant. Scores are compared under
docs/ARCHITECTURE.md section 3: every candidate and task within `tolerance`, and the candidates' order the
same except between candidates whose primary final scores differ by no more than the tolerance. Each
mismatch is logged with the request id and the largest difference.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from service.api.metrics import ServiceMetrics
from service.api.runtime import ServingModel
from service.engine import Variant

logger = logging.getLogger(__name__)

ScoreHook = Callable[[dict[str, Tensor]], dict[str, Tensor]]
_STOP = object()


@dataclass(frozen=True)
class ShadowJob:
    request_id: str
    serving: ServingModel
    primary: Variant
    features: dict[str, Tensor]
    primary_scores: dict[str, Tensor]


@dataclass(frozen=True)
class Comparison:
    max_abs_difference: float  # inf when the outputs differ in shape or hold NaN
    ranking_agrees: bool
    mismatched: bool


def compare_scores(
    primary: dict[str, Tensor], shadow: dict[str, Tensor], task_weights: Tensor, tasks: tuple[str, ...],
    tolerance: float,
) -> Comparison:
    """Per-candidate, per-task score difference and ranking agreement of two runs of one request."""
    if set(primary) != set(shadow) or any(primary[t].shape != shadow[t].shape for t in primary):
        return Comparison(float("inf"), False, True)
    difference = max((primary[t].double() - shadow[t].double()).abs().max().item() for t in tasks)
    final_primary = task_weights.double() @ torch.stack([primary[t].double() for t in tasks])  # [N]
    final_shadow = task_weights.double() @ torch.stack([shadow[t].double() for t in tasks])
    order = torch.argsort(final_primary, descending=True, stable=True)
    gaps = final_primary[order][:-1] - final_primary[order][1:]  # >= 0
    inverted = final_shadow[order][:-1] < final_shadow[order][1:]
    ranking_agrees = not bool((inverted & (gaps > tolerance)).any())
    difference = difference if difference == difference else float("inf")  # NaN compares as the worst case
    return Comparison(difference, ranking_agrees, not (difference <= tolerance and ranking_agrees))


class ShadowComparator:
    """Samples requests onto a bounded queue; a background thread scores them on the shadow variant."""

    def __init__(
        self, variant: Variant | None, sample_rate: float, queue_size: int, tolerance: float,
        metrics: ServiceMetrics, score_hook: ScoreHook | None = None,
    ) -> None:
        self.variant = variant
        self.sample_rate = sample_rate if variant is not None else 0.0
        self.tolerance = tolerance
        self.metrics = metrics
        self.score_hook = score_hook  # test-only: perturbs shadow scores to prove mismatches are caught
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
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

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until every queued job is compared (tests and shutdown); False on timeout."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout_s)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                self._compare(job)
            except Exception:  # a shadow failure must never take anything else down
                logger.exception("shadow comparison failed for request %s", getattr(job, "request_id", "?"))
            finally:
                self._queue.task_done()

    def _compare(self, job: ShadowJob) -> None:
        assert self.variant is not None
        shadow_scores = job.serving.score(self.variant, job.features)
        if self.score_hook is not None:
            shadow_scores = self.score_hook(shadow_scores)
        result = compare_scores(job.primary_scores, shadow_scores, job.serving.task_weights, job.serving.tasks,
                                self.tolerance)
        self.metrics.observe_shadow(job.primary.value, self.variant.value, result.max_abs_difference, result.mismatched)
        if result.mismatched:
            logger.warning(
                "shadow mismatch request_id=%s model=%s/%s primary=%s shadow=%s max_abs_difference=%.3g "
                "ranking_agrees=%s tolerance=%g",
                job.request_id, job.serving.name, job.serving.version, job.primary.value, self.variant.value,
                result.max_abs_difference, result.ranking_agrees, self.tolerance,
            )
