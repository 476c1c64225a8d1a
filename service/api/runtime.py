"""The loaded model, its built variants and the A/B routing; swapped whole and atomically on reload.

No FastAPI here: the runtime takes paths and tensors and raises the service's typed errors.
A request reads `runtime.serving` once and uses that object to the end, so a reload that swaps the
reference mid-request never mixes two models.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pydantic_core
import torch
from torch import Tensor, nn

from service.api.codec import RequestCodec
from service.api.config import Settings
from service.api.example_request import example_request
from service.api.errors import InvalidRequest, ModelRejected, NotReady, ReloadInProgress
from service.engine import Analysis, Variant
from service.engine.pipeline import reparameterize_all
from service.store.artifact import ArtifactError, load_artifact

logger = logging.getLogger(__name__)

EXAMPLE_SEED = 20260223  # fixed inputs for tracing and warm-up: start-up is reproducible
HASH_SPACE = 2**64


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
            return self.variants[variant](features)

    def final_scores(self, scores: dict[str, Tensor]) -> Tensor:
        """Task-weighted sum [N] that orders the candidates."""
        stacked = torch.stack([scores[task] for task in self.tasks])  # [T, N]
        return self.task_weights @ stacked


class VariantRouter:
    """Deterministic A/B arm per user: a stable hash of the user id picks a slice of [0, 1)."""

    def __init__(self, default: Variant, split: dict[Variant, float]) -> None:
        self.default = Variant(default)
        weights = {Variant(v): w for v, w in split.items() if w > 0}
        total = sum(weights.values())
        self.split = {v: weights[v] / total for v in Variant if v in weights} if weights else {}
        bounds, running = [], 0.0
        for variant, share in self.split.items():
            running += share
            bounds.append((running, variant))
        self._bounds = bounds

    def route(self, user_id: str) -> Variant:
        if not self._bounds:
            return self.default
        digest = hashlib.blake2b(user_id.encode("utf-8"), digest_size=8).digest()
        point = int.from_bytes(digest, "big") / HASH_SPACE  # same user, same point, in every process
        for bound, variant in self._bounds:
            if point < bound:
                return variant
        return self._bounds[-1][1]

    def to_dict(self) -> dict[str, Any]:
        return {"default_variant": self.default.value, "ab_split": {v.value: w for v, w in self.split.items()}}


def build_serving_model(settings: Settings, path: Path) -> ServingModel:
    """Load, verify, build every variant, check each against VanI and warm it; ModelRejected if unusable."""
    started = time.perf_counter()
    try:
        artifact = load_artifact(path)
    except ArtifactError as exc:
        raise ModelRejected(f"artifact refused: {exc}") from exc
    manifest = artifact.manifest
    if manifest.name != settings.model_name:
        raise ModelRejected(f"{artifact.path}: model.json names model {manifest.name!r}, expected {settings.model_name!r}")
    schema = artifact.schema
    user_inputs = [spec.name for spec in schema.user_features]
    example = schema.example_batch(settings.trace_candidates, torch.Generator().manual_seed(EXAMPLE_SEED))
    try:
        built = reparameterize_all(artifact.model, (example,), user_inputs, tuple(Variant))
        variants = {variant: result.module for variant, result in built.items()}
        reports = {variant: result.report.to_dict() for variant, result in built.items()}
        _warm_and_check(variants, reports, schema, settings)
    except Exception as exc:  # a model that cannot even run as VanI is refused, never served
        raise ModelRejected(f"{artifact.path}: variants could not be built or warmed: {exc}") from exc
    tasks = tuple(manifest.tasks)
    codec = RequestCodec(schema, max_candidates=settings.max_candidates, max_id=settings.max_id,
                         sequence_overflow=settings.sequence_overflow)
    _warm_codec(codec, settings)
    serving = ServingModel(
        name=manifest.name,
        version=manifest.version,
        path=artifact.path,
        architecture=manifest.architecture,
        tasks=tasks,
        task_weights=torch.tensor([float(manifest.task_weights[t]) for t in tasks], dtype=torch.float32),
        codec=codec,
        variants=variants,
        reports=reports,
        analysis=Analysis(settings.analysis_candidates, built).to_dict(),
        manifest=manifest.to_dict(),
        loaded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    logger.info("model %s/%s built and warmed in %.1fs", serving.name, serving.version, time.perf_counter() - started)
    return serving


def _warm_and_check(
    variants: dict[Variant, nn.Module], reports: dict[Variant, dict[str, Any]], schema: Any, settings: Settings
) -> None:
    """Run every variant at each warm-up size; a variant that disagrees with VanI serves as VanI instead."""
    generator = torch.Generator().manual_seed(EXAMPLE_SEED + 1)
    for n in settings.warmup_candidates:
        batch = schema.example_batch(n, generator)
        with torch.inference_mode():
            reference = variants[Variant.VANI](batch)
            for variant in (Variant.UOI, Variant.MARI):
                scores = variants[variant](batch)
                difference = max((scores[t] - reference[t]).abs().max().item() for t in reference)
                if not difference <= settings.tolerance:
                    reason = f"warm-up at N={n}: max |difference| to VanI {difference:.3g} > {settings.tolerance}"
                    logger.warning("variant %s falls back to VanI: %s", variant.value, reason)
                    variants[variant] = variants[Variant.VANI]
                    reports[variant] = {**reports[variant], "variant": "vani", "fallback_reason": reason}


def _warm_codec(codec: RequestCodec, settings: Settings) -> None:
    """Decode and encode one body per form, so the first real request pays no first-call costs."""
    n = min(max(settings.warmup_candidates), settings.max_candidates)
    for columnar in (True, False):
        body = pydantic_core.to_json(example_request(codec.schema, n=n, columnar=columnar, seed=EXAMPLE_SEED))
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
        router = VariantRouter(variant, ab_split or {})
        self.router = router
        return router

    def choose_variant(self, user_id: str) -> Variant:
        return self.router.route(user_id)


def check_version_name(version: str) -> str:
    """Admin input: a version is one path component (no traversal out of the store)."""
    if not version or "/" in version or "\\" in version or version.startswith("."):
        raise InvalidRequest(f"version {version!r} must be a single folder name", field="version", code="invalid_value")
    return version
