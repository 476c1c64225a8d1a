"""One scoring request end to end: body -> door (decode, encode) -> router -> variant -> door (response body).

A door is one protocol's way in and out: POST /rank's JSON (`RankDoor`, the default) or the Open Inference
Protocol (service/serving/v2_codec.py). Admission, routing, batching, the finite-scores check, shadow and
metrics are the same whichever door a request came through. With a version canary the user's version is picked
first (service/serving/runtime.py ServingNow), then the variant inside it; a sample is compared with another
version (service/serving/version_compare.py).

Every stage is timed. Decoding, encoding and the response body run on the codec thread (small ones on the event
loop, where a thread hop would cost more than the work); scoring on an inference slot
(service/serving/admission.py), where waiting requests of the same model and variant are scored as one call
when batching is on. The event loop only accepts connections and moves bytes. Nothing
here knows HTTP: bytes in, bytes and timings out. Queue time is whatever of the request's time no stage
accounts for: waiting for the codec thread, for admission and for a slot (the batching wait included).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import numpy as np
import pydantic_core
import torch

from service.engine import Variant
from service.features.schema import Kind
from service.serving.admission import InferencePool
from service.serving.errors import InvalidRequest
from service.serving.metrics import STAGES, ServiceMetrics
from service.serving.routing import Auto
from service.serving.runtime import ModelRuntime, ServingNow
from service.serving.serving_model import Scored, ServingModel
from service.serving.shadow import ShadowComparator, ShadowJob
from service.serving.version_compare import VersionComparator, VersionJob

logger = logging.getLogger(__name__)
# Below these, decoding (about 0.3 ms for a 64 KiB columnar body) and writing the response are cheaper than the two
# thread switches of handing them to the codec thread (docs/peers.md: the overhead at N = 100).
INLINE_BODY_BYTES = 64 * 1024
INLINE_CANDIDATES = 256
# A request that names no id gets this process's random prefix and a count: unique across processes and restarts like
# uuid4().hex (32 hex digits), without a getrandom system call per request on the event loop.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNT = itertools.count()
T = TypeVar("T")
Reply = TypeVar("Reply")  # what a door keeps from the request to write its response (top_k, requested outputs)


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
class Decoded(Generic[Reply]):
    """A request as model inputs (user leaves at batch 1, candidates at batch N), whichever door it came in by."""

    features: dict[str, torch.Tensor]
    n_candidates: int
    user_id: str | None  # the A/B routing key; None: the default variant (no user to keep in one arm)
    request_id: str | None  # safe to log and echo (codec.REQUEST_ID_PATTERN), or None
    reply: Reply
    decode: float
    encode: float


@dataclass(frozen=True)
class ResponseBody:
    content: bytes
    json_length: int | None = None  # binary tensor data follows the first json_length bytes (V2 binary extension)


class Door(Protocol[Reply]):
    """One protocol's request bytes -> model inputs, and scores -> its response bytes (both on the codec thread).
    `version`: the model version the request names (a V2 URL's), which pins it; None: the user's version."""

    version: str | None

    def decode(self, serving: ServingModel, body: bytes) -> Decoded[Reply]: ...

    def respond(self, serving: ServingModel, variant: Variant, request_id: str, scored: Scored,
                reply: Reply) -> ResponseBody: ...


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
    json_length: int | None = None  # see ResponseBody


@dataclass(frozen=True)
class _Prepared:
    """A decoded, encoded and routed request, ready for an inference slot."""

    request_id: str
    serving: ServingModel  # the version that serves it: the primary, or the one a canary split picked
    variant: Variant  # the form that runs: an A/B arm, the default, or what `auto` picked for n_candidates
    features: dict[str, torch.Tensor]
    n_candidates: int
    reply: Any  # the door's Reply
    decode: float
    encode: float
    auto: bool = False  # the variant was picked by the `auto` default


class RequestScorer:
    """Scores one request end to end on the current model; stateless apart from its collaborators."""

    def __init__(
        self, runtime: ModelRuntime, pool: InferencePool, shadow: ShadowComparator, metrics: ServiceMetrics,
        versions: VersionComparator,
    ) -> None:
        self.runtime = runtime
        self.pool = pool
        self.shadow = shadow
        self.metrics = metrics
        self.versions = versions

    async def score(self, body: bytes, header_request_id: str | None, door: Door[Any] | None = None) -> RankResult:
        """Score a body that came in by `door` (None: POST /rank's); raises the serving core's errors (invalid,
        overloaded...).

        Decoding and the response body run on the codec thread; scoring on an inference slot, batched with
        other waiting requests of the same model and variant when batching is on.
        """
        started = time.perf_counter()
        active = self.runtime.active  # one model and routing for the whole request, even if a new config swaps it
        by: Door[Any] = door or RANK_DOOR
        prepared = await self._codec_work(len(body) <= INLINE_BODY_BYTES,
                                          lambda: _prepare(active, by, body, header_request_id))
        serving = prepared.serving
        ticket = await self.pool.submit((id(serving), prepared.variant), prepared.n_candidates, prepared,
                                        lambda batch: self._score_on_slot(serving, batch))
        scored: Scored = ticket.result
        scores = scored.scores
        response, respond = await self._codec_work(
            prepared.n_candidates <= INLINE_CANDIDATES,
            lambda: _timed(lambda: by.respond(serving, prepared.variant, prepared.request_id, scored,
                                              prepared.reply)))
        shadow = self.shadow.sample(prepared.variant)
        if shadow is not None:
            self.shadow.submit(ShadowJob(prepared.request_id, serving, prepared.variant, shadow, prepared.features,
                                         scores))
        other = self.versions.sample(active, serving)
        if other is not None:
            self.versions.submit(_version_job(active, prepared, other, scores, by, body))
        total = time.perf_counter() - started
        infer = ticket.batch_seconds
        queue = max(0.0, total - prepared.decode - prepared.encode - infer - respond)
        times = StageTimes(queue, prepared.decode, prepared.encode, infer, respond)
        self._observe(serving, prepared, times)
        return RankResult(response.content, prepared.request_id, serving.name, serving.version, prepared.variant,
                          active.generation, prepared.n_candidates, times, response.json_length)

    async def _codec_work(self, small: bool, work: Callable[[], T]) -> T:
        """Small work right here on the event loop (a thread hop would cost more than the work), larger work on
        the codec thread so the loop keeps accepting and reading other requests meanwhile."""
        return work() if small else await self.pool.run_codec(work)

    def _score_on_slot(self, serving: ServingModel, batch: Sequence[_Prepared]) -> list[object]:
        """Per-task scores of each request of one batch (same model and variant), or the error of each that
        failed: a batch that cannot run as one call is retried request by request, so only a request that
        fails alone fails."""
        variant = batch[0].variant
        model = self.runtime.settings.model_name  # the served name (a metric label), whatever the manifest says
        self.metrics.batch_requests.labels(model=model, variant=variant.value).observe(len(batch))
        self.metrics.batch_candidates.labels(model=model, variant=variant.value).observe(
            sum(p.n_candidates for p in batch))
        outcomes = self._outcomes(serving, variant, batch)
        return [outcome if isinstance(outcome, Exception)
                else check_finite(serving, prepared.features, cast(dict[str, torch.Tensor], outcome))
                for prepared, outcome in zip(batch, outcomes)]

    def _outcomes(self, serving: ServingModel, variant: Variant, batch: Sequence[_Prepared]) -> list[object]:
        """Scores or error of each request: one call for the batch when it can, else one call per request."""
        if len(batch) > 1 and variant in serving.batched:
            try:
                return list(serving.score_batch(variant, [p.features for p in batch]))
            except Exception:  # one bad request must not fail the others: score each alone below
                logger.exception("batched call of %d requests failed; scoring them one by one", len(batch))
        outcomes: list[object] = []
        for prepared in batch:
            try:
                outcomes.append(serving.score(variant, prepared.features))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _observe(self, serving: ServingModel, prepared: _Prepared, times: StageTimes) -> None:
        self.metrics.observe_request(self.runtime.settings.model_name, serving.version, prepared.variant.value,
                                     tuple(times.seconds(stage) for stage in STAGES), times.total,
                                     prepared.n_candidates, prepared.auto)


def check_finite(
    serving: ServingModel, features: dict[str, torch.Tensor], scores: dict[str, torch.Tensor]
) -> Scored | InvalidRequest:
    """The scores with their final (task-weighted) scores, or an InvalidRequest when the inputs drove a healthy
    model past float32 (a 200 never carries NaN or inf: strict JSON parsers refuse them and the ranking would be
    meaningless). The model passed its finite warm-up, so the request's dense values are the likely cause: the
    one of largest magnitude is named."""
    stacked = torch.stack([scores[task] for task in serving.tasks])  # [T, N]: one check for every task
    final = serving.task_weights @ stacked  # [N]: computed once, here, for the check and the response
    if bool(torch.isfinite(stacked).all()) and bool(torch.isfinite(final).all()):
        return Scored(scores, final)
    field = _largest_dense_input(serving, features)
    hint = f"; the largest dense input is {field}" if field else ""
    return InvalidRequest(f"the request's features drive the model to non-finite scores{hint}; "
                          f"dense values of this magnitude are outside what the model can score",
                          field=field, code="non_finite_scores")


def _largest_dense_input(serving: ServingModel, features: dict[str, torch.Tensor]) -> str | None:
    """'user.<name>' or 'candidates.<name>[row]' of the dense value of largest magnitude, None without dense."""
    best: tuple[float, str] | None = None
    for spec in serving.codec.schema.features:
        values = features[spec.name]
        if spec.kind is not Kind.DENSE or values.numel() == 0:
            continue
        flat = values.abs().reshape(values.shape[0], -1).amax(dim=1)  # [B]
        row = int(flat.argmax())
        where = f"user.{spec.name}" if spec.is_user else f"candidates.{spec.name}[{row}]"
        if best is None or float(flat[row]) > best[0]:
            best = (float(flat[row]), where)
    return None if best is None else best[1]


def _version_job(active: ServingNow, prepared: _Prepared, other: ServingModel, scores: dict[str, torch.Tensor],
                 door: Door[Any], body: bytes) -> VersionJob:
    """A request to score on `other` as well; its body is kept only when `other` reads other features."""
    same_schema = other.codec.schema == prepared.serving.codec.schema
    return VersionJob(prepared.request_id, active.serving.version, prepared.serving, other, prepared.variant,
                      prepared.features, scores, active.compare,
                      None if same_schema else lambda model: door.decode(model, body).features)


def _prepare(active: ServingNow, door: Door[Any], body: bytes, header_request_id: str | None) -> _Prepared:
    """Decode with the primary's codec (which reads the user id), pick the user's version, decode again only when
    that version's feature schema differs, then route the variant inside that version."""
    if door.version is not None:  # named by the request: that version if it serves (the door refuses others)
        pinned = active.serving_versions().get(door.version, active.serving)
        decoded = door.decode(pinned, body)
        return _routed(active, pinned, decoded, header_request_id)
    decoded = door.decode(active.serving, body)
    serving = active.serving_for(decoded.user_id)
    if serving is not active.serving and serving.codec.schema != active.serving.codec.schema:
        first, again = decoded, door.decode(serving, body)
        decoded = dataclasses.replace(again, decode=first.decode + again.decode, encode=first.encode + again.encode)
    return _routed(active, serving, decoded, header_request_id)


def _routed(active: ServingNow, serving: ServingModel, decoded: Decoded[Any], header_request_id: str | None
            ) -> _Prepared:
    """The variant inside the version that serves: the user's A/B arm, the default, or `auto`'s pick."""
    choice = active.router.route(decoded.user_id)
    variant = choice if isinstance(choice, Variant) else serving.fastest.variant_for(decoded.n_candidates)
    request_id = decoded.request_id or header_request_id or f"{_ID_PREFIX}{next(_ID_COUNT):016x}"
    return _Prepared(request_id, serving, variant, decoded.features, decoded.n_candidates, decoded.reply,
                     decoded.decode, decoded.encode, choice is Auto.AUTO)


class RankDoor:
    """POST /rank: the service's own JSON (service/serving/codec.py); the reply is the request's top_k."""

    version: str | None = None  # /rank names no version: the user's version serves

    def decode(self, serving: ServingModel, body: bytes) -> Decoded[int | None]:
        read = serving.codec.read(body)
        return Decoded(read.encoded.features, read.encoded.n_candidates, read.user_id, read.request_id, read.top_k,
                       read.decode_s, read.encode_s)

    def respond(self, serving: ServingModel, variant: Variant, request_id: str, scored: Scored,
                reply: int | None) -> ResponseBody:
        return ResponseBody(_response_body(serving, variant, request_id, scored, reply))


RANK_DOOR = RankDoor()


def _timed(work: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    return work(), time.perf_counter() - started


def _response_body(
    serving: ServingModel, variant: Variant, request_id: str, scored: Scored, top_k: int | None
) -> bytes:
    """JSON of the response: every candidate's per-task and final score, and the top_k order."""
    scores, final = scored.scores, scored.final.numpy()  # [N]
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
