"""The loaded model with every variant built, checked and warmed, and the routing; swapped whole on reload.

The runtime takes paths and tensors and raises the serving core's error kinds. A request reads
`runtime.active` once and uses that object to the end, so a new config that swaps the reference mid-request
never mixes two models or two routings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import linecache
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic_core
import torch
from torch import Tensor, fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx import graph_module as fx_graph_module
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from service.engine import Analysis, Variant
from service.engine.equivalence import compare
from service.features.schema import FeatureSchema
from service.serving.batching import build_batched
from service.serving.build import CAPTURE_SEED, build_variants
from service.serving.codec import RequestCodec
from service.serving.compile import compile_variants, use_compile_cache
from service.serving.errors import ModelRejected, NotReady
from service.serving.example_request import example_request
from service.serving.fastest import FastestForms, compile_targets, measure_forms
from service.serving.routing import Auto, VariantRouter
from service.serving.settings import Settings
from service.store import ArtifactError, load_artifact, resolve_version
from service.store.artifact import check_component

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
    fastest: FastestForms  # every form timed at the warm-up sizes: what `auto` serves per request size
    compilation: dict[str, Any] = field(default_factory=dict)  # compile.CompileReport.to_dict()
    batched: dict[Variant, nn.Module] = field(default_factory=dict)  # segment-batched forms (batching on)

    def score(self, variant: Variant, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-task scores [N] of one request (user leaves at batch 1, candidates at batch N)."""
        with torch.inference_mode():
            scores: dict[str, Tensor] = self.variants[variant](features)
        return scores

    def score_batch(self, variant: Variant, requests: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """Per-task scores of several requests scored as one call (the user side kept split); KeyError when
        `variant` has no batched form."""
        batched = self.batched[variant]
        with torch.inference_mode():
            scores: list[dict[str, Tensor]] = batched([((features,), {}) for features in requests])
        return scores

    def final_scores(self, scores: dict[str, Tensor]) -> Tensor:
        """Task-weighted sum [N] that orders the candidates."""
        return final_scores(scores, self.tasks, self.task_weights)


def final_scores(scores: dict[str, Tensor], tasks: tuple[str, ...], task_weights: Tensor) -> Tensor:
    """Task-weighted sum [N] of per-task scores, the order of the candidates."""
    stacked = torch.stack([scores[task] for task in tasks])  # [T, N]
    return task_weights @ stacked


def build_serving_model(settings: Settings, path: Path, routed: frozenset[Variant | Auto] | None = None
                        ) -> ServingModel:
    """Load, verify, build every variant, check each against VanI, warm it and time it for `auto`; ModelRejected
    if unusable. `routed`: what the serving config sends requests to (compile=auto compiles those, and under
    `auto` the forms it would serve: fastest.compile_targets; None: all)."""
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
        use_compile_cache(settings.compile_cache_dir)
        uncompiled = dict(variants)
        measured = None  # under compile=auto and the auto default: which forms are worth compiling
        if settings.compile == "auto" and routed is not None and Auto.AUTO in routed:
            measured = measure_forms(variants, schema.example_batch, settings.warmup_candidates)
        targets = compile_targets(routed, measured)
        variants, compilation = compile_variants(variants, schema.example_batch, settings.warmup_candidates,
                                                 settings.tolerance, settings.compile, targets)
        _warm_and_check(variants, reports, schema, lambda scores: final_scores(scores, tasks, task_weights),
                        settings)
        if measured is None or any(variants[v] is not uncompiled[v] for v in variants):  # compiled or fell back
            measured = measure_forms(variants, schema.example_batch, settings.warmup_candidates)
        fastest = measured
        batched = build_batched(built, reports, schema.example_batch) if settings.batching else {}
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
        analysis=_as_served(Analysis(settings.analysis_candidates, built).to_dict(), reports),
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
    variants: dict[Variant, nn.Module], reports: dict[Variant, dict[str, Any]], schema: FeatureSchema,
    rank_by: Callable[[dict[str, Tensor]], Tensor], settings: Settings,
) -> None:
    """Run every variant at each warm-up size; one not equivalent to VanI (section 3) serves as VanI instead."""
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
                    reports[variant] = {**reports[variant], "variant": "vani", "fallback_reason": reason}


def _as_served(analysis: dict[str, Any], reports: dict[Variant, dict[str, Any]]) -> dict[str, Any]:
    """The analysis with each variant's FLOPs row saying what it runs as after the warm-up: the engine's reports
    predate it, and a variant the warm-up found not equivalent serves as VanI (`reports` says so)."""
    for variant, report in reports.items():
        row = analysis["flops"].get(variant.value)
        if row is not None:
            row.update(runs_as=report["variant"], fallback_reason=report.get("fallback_reason"))
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


@dataclass(frozen=True)
class ActiveConfig:
    """What serves requests now, swapped as one reference: the model, the routing and the config generation."""

    serving: ServingModel
    router: VariantRouter
    generation: int


@dataclass
class ModelRuntime:
    """What the service serves now (swapped atomically), and how to build a version of the configured model.

    The runtime does not decide what to serve: service/serving/config_watch.py applies the serving config.
    """

    settings: Settings
    _active: ActiveConfig | None = None

    @property
    def active(self) -> ActiveConfig:
        active = self._active
        if active is None:
            raise NotReady("no model is loaded yet")
        return active

    @property
    def serving(self) -> ServingModel:
        return self.active.serving

    @property
    def router(self) -> VariantRouter:
        return self.active.router

    @property
    def ready(self) -> bool:
        return self._active is not None

    def version_path(self, version: str | None) -> Path:
        """The folder of `version` of the configured model (None: its latest); ModelRejected when there is none."""
        model_dir = self.settings.model_store / self.settings.model_name
        try:
            return resolve_version(model_dir / check_component("version", version) if version else model_dir)
        except ArtifactError as exc:
            raise ModelRejected(f"version {version or '(latest)'} refused: {exc}") from exc

    def build(self, path: Path, routed: frozenset[Variant | Auto] | None = None) -> ServingModel:
        """Build, verify and warm the version at `path` beside the one serving; requests see nothing yet.
        `routed`: the variants the serving config sends requests to (what compile=auto compiles)."""
        return build_serving_model(self.settings, path, routed)

    def activate(self, serving: ServingModel, router: VariantRouter, generation: int) -> ActiveConfig:
        """Swap what serves: one reference assignment, so a request sees the old or the new config, whole."""
        active = ActiveConfig(serving, router, generation)
        self._active = active
        return active


def release_build_memory() -> None:
    """Give back what builds leave behind, once a swap has dropped the previous model (docs/soak.md).

    torch.export's class-level memo tables (ShapeEnv's lru_caches, keyed by the ShapeEnv itself, and
    FakeTensorMode's dispatch cache) keep past captures' shape environments and fake tensors alive; the old
    variants are cycles only the collector frees; and glibc keeps freed heap pages unless trimmed. Clearing the
    memo tables costs the next build a few recomputations, nothing else.

    At the end, what serves now is frozen (gc.freeze): the model, its graphs and torch's tables are hundreds of
    thousands of objects that live until the next swap, and a full collection walking them took 150-400 ms on
    the event loop's thread, a latency spike for every request waiting then. Frozen objects are never walked;
    the next call unfreezes them first, so the model it replaced is collected then like any other garbage.
    """
    gc.unfreeze()
    for member in vars(ShapeEnv).values():
        cache_clear = getattr(member, "cache_clear", None)
        if callable(cache_clear):
            cache_clear()
    FakeTensorMode.cache_clear()
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on some of torch's deprecated objects warns
        warnings.simplefilter("ignore")
        objects = gc.get_objects()
        shape_envs = [obj for obj in objects if isinstance(obj, ShapeEnv)]
        graph_modules = [obj for obj in objects if isinstance(obj, fx.GraphModule)]
    del objects
    _forget_generated_sources(graph_modules)
    for shape_env in shape_envs:
        # fake tensor -> (C++ symbolic sizes) -> SymNode -> ShapeEnv -> tracked_fakes -> fake tensor: a cycle
        # through C++ that the collector cannot see; captures are over, so cut it on the ShapeEnv's side
        shape_env.tracked_fakes = None
        shape_env.fake_tensor_cache.clear()
    gc.collect()
    _malloc_trim()
    gc.freeze()


def _forget_generated_sources(alive: list[fx.GraphModule]) -> None:
    """fx keeps the Python source of every GraphModule it ever generated (for tracebacks), in its loader's
    cache and in linecache, forever: about 0.7 MB per build of the default model. Keep only the live ones'."""
    keep = {getattr(getattr(type(module).forward, "__code__", None), "co_filename", None) for module in alive}
    cache = fx_graph_module._loader.eval_cache
    for key in [key for key in cache if key not in keep]:
        del cache[key]
        linecache.cache.pop(key, None)


def _malloc_trim() -> None:
    """glibc's malloc_trim(0): return free heap pages to the OS (nothing elsewhere)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is not None:
        trim(0)
