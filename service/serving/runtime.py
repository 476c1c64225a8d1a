"""The loaded model with every variant built, checked and warmed, and the routing; swapped whole on reload.

The runtime takes paths and tensors and raises the serving core's error kinds. A request reads
`runtime.serving` once and uses that object to the end, so a reload that swaps the reference mid-request
never mixes two models.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic_core
import torch
from torch import Tensor, nn

from service.engine import Analysis, Variant
from service.engine.equivalence import compare
from service.features.schema import FeatureSchema
from service.serving.build import CAPTURE_SEED, build_variants
from service.serving.codec import RequestCodec
from service.serving.errors import InvalidRequest, ModelRejected, NotReady, ReloadInProgress
from service.serving.example_request import example_request
from service.serving.routing import VariantRouter
from service.serving.settings import Settings
from service.store import ArtifactError, load_artifact

logger = logging.getLogger(__name__)

WARMUP_SEED = CAPTURE_SEED + 1  # fixed warm-up inputs, other than the capture example: start-up is reproducible


@dataclass(frozen=True)
class ServingModel:
    """One artifact with every variant built, checked against VanI and warmed; never mutated."""

    name: str
    version: str
    path: Path
    architecture: str
    tasks: tuple[str, ...]
    task_weights: Tensor  # [T], float32, in `tasks` order
    codec: RequestCodec
    variants: dict[Variant, nn.Module]
    reports: dict[Variant, dict[str, Any]]
    analysis: dict[str, Any]
    manifest: dict[str, Any]
    loaded_at: str

    def score(self, variant: Variant, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-task scores [N] of one request (user leaves at batch 1, candidates at batch N)."""
        with torch.inference_mode():
            scores: dict[str, Tensor] = self.variants[variant](features)
        return scores

    def final_scores(self, scores: dict[str, Tensor]) -> Tensor:
        """Task-weighted sum [N] that orders the candidates."""
        return final_scores(scores, self.tasks, self.task_weights)


def final_scores(scores: dict[str, Tensor], tasks: tuple[str, ...], task_weights: Tensor) -> Tensor:
    """Task-weighted sum [N] of per-task scores, the order of the candidates."""
    stacked = torch.stack([scores[task] for task in tasks])  # [T, N]
    return task_weights @ stacked


def build_serving_model(settings: Settings, path: Path) -> ServingModel:
    """Load, verify, build every variant, check each against VanI and warm it; ModelRejected if unusable."""
    started = time.perf_counter()
    try:
        artifact = load_artifact(path)
    except ArtifactError as exc:
        raise ModelRejected(f"artifact refused: {exc}") from exc
    manifest = artifact.manifest
    if manifest.name != settings.model_name:
        raise ModelRejected(
            f"{artifact.path}: model.json names model {manifest.name!r}, expected {settings.model_name!r}"
        )
    schema = artifact.schema
    tasks = tuple(manifest.tasks)
    task_weights = torch.tensor([float(manifest.task_weights[t]) for t in tasks], dtype=torch.float32)
    try:
        built = build_variants(artifact.model, manifest.user_features, schema.example_batch,
                               candidates=settings.trace_candidates)
        variants = {variant: result.module for variant, result in built.items()}
        reports = {variant: result.report.to_dict() for variant, result in built.items()}
        _warm_and_check(variants, reports, schema, lambda scores: final_scores(scores, tasks, task_weights),
                        settings)
    except Exception as exc:  # a model that cannot even run as VanI is refused, never served
        raise ModelRejected(f"{artifact.path}: variants could not be built or warmed: {exc}") from exc
    codec = RequestCodec(schema, max_candidates=settings.max_candidates, max_id=settings.max_id,
                         sequence_overflow=settings.sequence_overflow)
    _warm_codec(codec, settings)
    serving = ServingModel(
        name=manifest.name,
        version=manifest.version,
        path=artifact.path,
        architecture=manifest.architecture,
        tasks=tasks,
        task_weights=task_weights,
        codec=codec,
        variants=variants,
        reports=reports,
        analysis=Analysis(settings.analysis_candidates, built).to_dict(),
        manifest=manifest.to_dict(),
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    logger.info("model %s/%s built and warmed in %.1fs", serving.name, serving.version, time.perf_counter() - started)
    return serving


def _warm_and_check(
    variants: dict[Variant, nn.Module], reports: dict[Variant, dict[str, Any]], schema: FeatureSchema,
    rank_by: Callable[[dict[str, Tensor]], Tensor], settings: Settings,
) -> None:
    """Run every variant at each warm-up size; one not equivalent to VanI (section 3) serves as VanI instead."""
    generator = torch.Generator().manual_seed(WARMUP_SEED)
    for n in settings.warmup_candidates:
        batch = schema.example_batch(n, generator)
        with torch.inference_mode():
            reference = variants[Variant.VANI](batch)
            for variant in (Variant.UOI, Variant.MARI):
                result = compare(variants[variant](batch), reference, settings.tolerance, rank_by)
                if not result.equivalent:
                    reason = (f"warm-up at N={n}: max |difference| to VanI {result.max_difference:.3g}, rankings "
                              f"{'agree' if result.rankings_agree else 'differ'} (tolerance {settings.tolerance})")
                    logger.warning("variant %s falls back to VanI: %s", variant.value, reason)
                    variants[variant] = variants[Variant.VANI]
                    reports[variant] = {**reports[variant], "variant": "vani", "fallback_reason": reason}


def _warm_codec(codec: RequestCodec, settings: Settings) -> None:
    """Decode and encode one body per form, so the first real request pays no first-call costs."""
    n = min(max(settings.warmup_candidates), settings.max_candidates)
    for columnar in (True, False):
        body = pydantic_core.to_json(example_request(codec.schema, n=n, columnar=columnar, seed=WARMUP_SEED))
        codec.encode(codec.decode(body))


@dataclass
class ModelRuntime:
    """What the service serves now: the model (swapped atomically) and the routing of users to variants."""

    settings: Settings
    _serving: ServingModel | None = None
    router: VariantRouter = field(init=False)
    _reload_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.router = VariantRouter(self.settings.variant, dict(self.settings.ab_split))

    @property
    def serving(self) -> ServingModel:
        serving = self._serving
        if serving is None:
            raise NotReady("no model is loaded yet")
        return serving

    @property
    def ready(self) -> bool:
        return self._serving is not None

    def load(self, version: str | None = None) -> ServingModel:
        """Build the configured model (or `version` of it) beside the current one, then swap; one at a time."""
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadInProgress("another reload is still building its model")
        try:
            if version is None:
                path = self.settings.model_path
            else:
                path = self.settings.model_store / self.settings.model_name / check_version_name(version)
            serving = build_serving_model(self.settings, path)
            self._serving = serving  # one reference assignment: requests see the old or the new model, whole
            return serving
        finally:
            self._reload_lock.release()

    def set_routing(self, variant: Variant, ab_split: dict[Variant, float] | None = None) -> VariantRouter:
        """Switch the default variant and the A/B split (an empty split sends everyone to `variant`)."""
        try:
            router = VariantRouter(variant, ab_split or {})
        except ValueError as exc:
            raise InvalidRequest(str(exc), field="ab_split", code="invalid_value") from None
        self.router = router
        return router

    def choose_variant(self, user_id: str) -> Variant:
        return self.router.route(user_id)


def check_version_name(version: str) -> str:
    """Admin input: a version is one path component (no traversal out of the store)."""
    if not version or "/" in version or "\\" in version or version.startswith("."):
        raise InvalidRequest(f"version {version!r} must be a single folder name", field="version", code="invalid_value")
    return version
