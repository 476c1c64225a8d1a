"""Load one version of the model into a ServingModel: verify the artifact, build every variant (the engine),
compile what the compile mode says, check each variant against VanI and warm it, time the forms for `auto`.

A model that cannot run even as VanI is refused (ModelRejected), never served; a variant that is not
equivalent to VanI at the warm-up serves as VanI, and its report says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic_core
import torch
from torch import Tensor, nn

from service.engine import Analysis, Variant
from service.engine.equivalence import compare
from service.features.schema import FeatureSchema
from service.serving.batching import build_batched
from service.serving.build import CAPTURE_SEED, build_variants
from service.serving.codec import RequestCodec
from service.serving.compile import compile_variants, use_compile_cache
from service.serving.errors import ModelRejected
from service.serving.example_request import example_request
from service.serving.fastest import compile_targets, measure_forms
from service.serving.routing import Auto
from service.serving.serving_model import ServingModel, final_scores
from service.serving.settings import Settings
from service.serving.variant_status import VariantStatus
from service.store import ArtifactError, load_artifact

logger = logging.getLogger(__name__)

WARMUP_SEED = CAPTURE_SEED + 1  # fixed warm-up inputs, other than the capture example: start-up is reproducible


def build_serving_model(settings: Settings, path: Path, routed: frozenset[Variant | Auto] | None = None
                        ) -> ServingModel:
    """Load, verify, build every variant, check each against VanI, warm it and time it for `auto`; ModelRejected
    if unusable. `routed`: what the fleet config sends requests to (compile=auto compiles those, and under
    `auto` the one form it serves at the most warm-up sizes: fastest.compile_targets; None: all)."""
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
        statuses = {variant: VariantStatus.built(result.report) for variant, result in built.items()}
        use_compile_cache(settings.compile_cache_dir)
        uncompiled = dict(variants)
        measured = None  # under compile=auto and the auto default: which forms are worth compiling
        if settings.compile == "auto" and routed is not None and Auto.AUTO in routed:
            measured = measure_forms(variants, schema.example_batch, settings.warmup_candidates)
        targets = compile_targets(routed, measured)
        variants, compilation = compile_variants(variants, schema.example_batch, settings.warmup_candidates,
                                                 settings.tolerance, settings.compile, targets)
        statuses = _warm_and_check(variants, statuses, schema,
                                   lambda scores: final_scores(scores, tasks, task_weights), settings)
        if measured is None or any(variants[v] is not uncompiled[v] for v in variants):  # compiled or fell back
            measured = measure_forms(variants, schema.example_batch, settings.warmup_candidates)
        fastest = measured
        batched: dict[Variant, nn.Module] = {}
        if settings.batching:
            batched, batching = build_batched(built, {v: s.runs_as for v, s in statuses.items()},
                                              schema.example_batch)
            statuses = {v: s.with_batching(batching[v]) if v in batching else s for v, s in statuses.items()}
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
        statuses=statuses,
        analysis=_as_served(Analysis(settings.analysis_candidates, built).to_dict(), statuses),
        manifest=manifest.to_dict(),
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        fastest=fastest,
        compilation=compilation.to_dict(),
        batched=batched,
    )
    logger.info("model %s/%s built and warmed in %.1fs (timing the forms for auto: %.2fs; fastest per size: %s)",
                serving.name, serving.version, time.perf_counter() - started, fastest.seconds,
                {n: v.value for n, v in fastest.fastest.items()})
    return serving


def _warm_and_check(
    variants: dict[Variant, nn.Module], statuses: dict[Variant, VariantStatus], schema: FeatureSchema,
    rank_by: Callable[[dict[str, Tensor]], Tensor], settings: Settings,
) -> dict[Variant, VariantStatus]:
    """Run every variant at each warm-up size; one not equivalent to VanI (section 3) serves as VanI instead
    (`variants` is changed in place, the statuses that say so are returned)."""
    statuses = dict(statuses)
    generator = torch.Generator().manual_seed(WARMUP_SEED)
    for n in settings.warmup_candidates:
        batch = schema.example_batch(n, generator)
        with torch.inference_mode():
            reference = variants[Variant.VANI](batch)
            _check_finite_warm_up(reference, rank_by(reference), n)
            for variant in (Variant.UOI, Variant.MARI):
                result = compare(variants[variant](batch), reference, settings.tolerance, rank_by)
                if not result.equivalent:
                    reason = (f"warm-up at N={n}: max |difference| to VanI {result.max_difference:.3g}, rankings "
                              f"{'agree' if result.rankings_agree else 'differ'} (tolerance {settings.tolerance})")
                    logger.warning("variant %s falls back to VanI: %s", variant.value, reason)
                    variants[variant] = variants[Variant.VANI]
                    statuses[variant] = statuses[variant].served_as_vani(reason)
    return statuses


def _as_served(analysis: dict[str, Any], statuses: dict[Variant, VariantStatus]) -> dict[str, Any]:
    """The analysis with each variant's FLOPs row saying what it runs as after the warm-up: the engine's reports
    predate it, and a variant the warm-up found not equivalent serves as VanI (its status says so)."""
    for variant, status in statuses.items():
        row = analysis["flops"].get(variant.value)
        if row is not None:
            row.update(runs_as=status.runs_as.value, fallback_reason=status.fallback_reason)
    return analysis


def _check_finite_warm_up(scores: dict[str, Tensor], final: Tensor, n: int) -> None:
    """A model whose scores on ordinary inputs are NaN or inf (NaN weights, overflowing task weights) would
    answer every request with a meaningless ranking: it is refused, never served."""
    for task, values in scores.items():
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"warm-up at N={n}: task {task!r} scores are not finite (NaN or inf)")
    if not bool(torch.isfinite(final).all()):
        raise ValueError(f"warm-up at N={n}: the task-weighted final scores are not finite (check task_weights)")


def _warm_codec(codec: RequestCodec, settings: Settings) -> None:
    """Decode and encode one body per form, so the first real request pays no first-call costs."""
    n = min(max(settings.warmup_candidates), settings.max_candidates)
    for columnar in (True, False):
        body = pydantic_core.to_json(example_request(codec.schema, n=n, columnar=columnar, seed=WARMUP_SEED))
        codec.encode(codec.decode(body))
