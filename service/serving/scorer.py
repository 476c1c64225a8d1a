"""One /rank request end to end: body -> codec (decode, encode) -> router -> variant -> response body.

Every stage is timed, and all of them run on one inference slot (a worker thread), so the event loop only
accepts connections and moves bytes. Nothing here knows HTTP: bytes in, bytes and timings out.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import numpy as np
import pydantic_core
import torch

from service.engine import Variant
from service.serving.admission import InferencePool
from service.serving.metrics import STAGES, ServiceMetrics
from service.serving.runtime import ActiveConfig, ModelRuntime, ServingModel
from service.serving.shadow import ShadowComparator, ShadowJob


@dataclass(frozen=True)
class StageTimes:
    """Seconds per stage of one request (the fields are metrics.STAGES)."""

    queue: float
    decode: float
    encode: float
    infer: float
    respond: float

    @property
    def total(self) -> float:
        return sum(self.seconds(stage) for stage in STAGES)

    def seconds(self, stage: str) -> float:
        return float(getattr(self, stage))

    def server_timing(self) -> str:
        """Server-Timing header value, in milliseconds."""
        parts = [f"{stage};dur={self.seconds(stage) * 1e3:.3f}" for stage in STAGES]
        return ", ".join(parts + [f"total;dur={self.total * 1e3:.3f}"])


@dataclass(frozen=True)
class RankResult:
    body: bytes
    request_id: str
    model_name: str
    model_version: str
    variant: Variant
    config_generation: int
    n_candidates: int
    times: StageTimes


@dataclass(frozen=True)
class _Scored:
    body: bytes
    request_id: str
    variant: Variant
    n_candidates: int
    decode: float
    encode: float
    infer: float
    respond: float


class RequestScorer:
    """Scores one request end to end on the current model; stateless apart from its collaborators."""

    def __init__(
        self, runtime: ModelRuntime, pool: InferencePool, shadow: ShadowComparator, metrics: ServiceMetrics
    ) -> None:
        self.runtime = runtime
        self.pool = pool
        self.shadow = shadow
        self.metrics = metrics

    async def score(self, body: bytes, header_request_id: str | None) -> RankResult:
        """Score a /rank body on an inference slot; raises the serving core's errors (invalid, overloaded...)."""
        active = self.runtime.active  # one model and routing for the whole request, even if a new config swaps it
        scored, waited = await self.pool.run(lambda: self._score_on_slot(active, body, header_request_id))
        times = StageTimes(waited, scored.decode, scored.encode, scored.infer, scored.respond)
        self._observe(scored, times)
        return RankResult(scored.body, scored.request_id, active.serving.name, active.serving.version, scored.variant,
                          active.generation, scored.n_candidates, times)

    def _score_on_slot(self, active: ActiveConfig, body: bytes, header_request_id: str | None) -> _Scored:
        serving = active.serving
        t0 = time.perf_counter()
        request = serving.codec.decode(body)
        t1 = time.perf_counter()
        encoded = serving.codec.encode(request)
        t2 = time.perf_counter()
        variant = active.router.route(request.user_id)
        scores = serving.score(variant, encoded.features)
        t3 = time.perf_counter()
        request_id = request.request_id or header_request_id or uuid.uuid4().hex
        response = _response_body(serving, variant, request_id, scores, request.top_k)
        t4 = time.perf_counter()
        shadow = self.shadow.sample(variant)
        if shadow is not None:
            self.shadow.submit(ShadowJob(request_id, serving, variant, shadow, encoded.features, scores))
        return _Scored(response, request_id, variant, encoded.n_candidates, t1 - t0, t2 - t1, t3 - t2, t4 - t3)

    def _observe(self, scored: _Scored, times: StageTimes) -> None:
        variant = scored.variant.value
        for stage in STAGES:
            self.metrics.observe_stage(stage, variant, times.seconds(stage))
        self.metrics.request_seconds.labels(variant=variant).observe(times.total)
        self.metrics.candidates_per_request.observe(scored.n_candidates)
        self.metrics.candidates_scored.labels(variant=variant).inc(scored.n_candidates)


def _response_body(
    serving: ServingModel, variant: Variant, request_id: str, scores: dict[str, torch.Tensor], top_k: int | None
) -> bytes:
    """JSON of the response: every candidate's per-task and final score, and the top_k order."""
    final = serving.final_scores(scores).numpy()  # [N]
    n = final.shape[0]
    k = n if top_k is None else min(top_k, n)
    if k < n:
        top = np.argpartition(-final, k - 1)[:k]
        order = top[np.argsort(-final[top], kind="stable")]
    else:
        order = np.argsort(-final, kind="stable")
    return pydantic_core.to_json({
        "request_id": request_id,
        "model": {"name": serving.name, "version": serving.version},
        "variant": variant.value,
        "n_candidates": n,
        "tasks": list(serving.tasks),
        "scores": {task: scores[task].tolist() for task in serving.tasks},
        "final_scores": final.tolist(),
        "ranking": order.tolist(),
    })
