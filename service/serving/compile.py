"""Compiled variants (RANKER_COMPILE): each built variant through torch.compile, at start-up.

Modes: "auto" (the default) compiles the variants the fleet config routes to (default, A/B arms, shadow; under
the `auto` default, the form measured fastest uncompiled at the most warm-up sizes: fastest.compile_targets) and
keeps each one only when it is equivalent to itself uncompiled AND faster at the warm-up sizes (interleaved
medians, measured here); "inductor" compiles every built variant and keeps each one that is equivalent; "off"
compiles nothing. Whatever is not kept is served uncompiled, and its outcome says why (`/v1/models` "compile").

A variant is compiled with a dynamic candidate batch: the candidate leaves of the first warm-up call are
marked dynamic in dim 0 (user leaves stay at batch 1, every other size stays static), so one graph serves
every N >= 2; N = 1 gets its own graph (torch specializes sizes 0 and 1). Both are compiled here, before
/readyz turns ready, by running the warm-up sizes. Every compiled module is checked against its own
uncompiled module at those sizes (equivalence policy, docs/ARCHITECTURE.md section 3).

inductor keeps what it compiled in an on-disk cache (TORCHINDUCTOR_CACHE_DIR; RANKER_COMPILE_CACHE_DIR sets it),
so a restart or a reload of the same graphs skips most of the compile (docs/peers.md has the seconds).

Compiled graphs are frozen (inductor's `freezing`): the weights become constants of the graph, so inductor
folds what depends on weights alone and packs each linear layer's weight once, at compile time (MKL/oneDNN). On
the default model, one torch thread, that made compiled MaRI 1.2-1.9x faster than uncompiled where unfrozen it
was 1.0-1.1x (N = 64 to 2000; docs/peers.md), for ~80 MB more memory per compiled variant (the packed copies).
The gain depends on the CPU: on an AVX2 box (no AVX-512) the same check measured 1.05-1.14x (N = 100 and 1000).
A served model is never mutated (ServingModel is frozen; a reload builds a new one), so constants are safe.

While serving, a call that would need a new graph (an input shape never seen at warm-up) runs the
uncompiled graph instead of compiling in the request path (stance "eager_on_recompile").
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
import torch._inductor.config
from torch import Tensor, nn

from service.benchmark import interleaved_medians
from service.engine import Variant
from service.engine.equivalence import compare
from service.engine.pipeline import GraphRunner

logger = logging.getLogger(__name__)

CompileMode = Literal["off", "auto", "inductor"]
ExampleBatch = Callable[[int, torch.Generator], dict[str, Tensor]]  # (n candidates, generator) -> features
SERVING_STANCE = "eager_on_recompile"  # never compile in the request path
COMPILE_SEED = 20260224  # fixed check inputs: a compile check is reproducible
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
REASON_CHARS = 300  # /v1/models shows the first line of a compile error, cut to this length
# "auto"'s speed check: medians of interleaved calls at each warm-up size, after one warm-up round. A few calls
# suffice: compiled and uncompiled differ by 10-50% where compiling pays, and the check runs at every start-up.
SPEED_REPEATS = 11
# inductor's settings while this module compiles (every compile happens in _compile_and_check, never while
# serving): freezing, see the module docstring. A config patch, as torch.compile's `options` do not reach it.
INDUCTOR_CONFIG: dict[str, Any] = {"freezing": True}
NOT_ROUTED = ("not routed to by the fleet config when this version was built, nor, under the auto default, "
              "measured fastest uncompiled at the most warm-up sizes (compile=auto compiles those only)")


@dataclass(frozen=True)
class CompileOutcome:
    """What compiling one variant gave: compiled or not (and why not), and the seconds it took."""

    compiled: bool
    seconds: float
    reason: str | None = None
    speed: dict[int, dict[str, float]] | None = None  # auto: N -> compiled and uncompiled median ms per call

    def to_dict(self) -> dict[str, Any]:
        return {"compiled": self.compiled, "seconds": round(self.seconds, 3), "reason": self.reason,
                "speed_ms": None if self.speed is None else {str(n): v for n, v in self.speed.items()}}


@dataclass(frozen=True)
class CompileReport:
    """The compile mode and every variant's outcome, as /v1/models shows it."""

    mode: CompileMode
    variants: dict[Variant, CompileOutcome]

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "variants": {v.value: o.to_dict() for v, o in self.variants.items()}}


def use_compile_cache(directory: Path | None) -> None:
    """inductor's on-disk cache in `directory` (None: torch's default). inductor reads the location from this
    environment variable each time it looks, and has no other setting for it."""
    if directory is not None:
        os.environ[INDUCTOR_CACHE_ENV] = str(directory)


class CompiledVariant(nn.Module):
    """A compiled variant that never compiles while serving: a new input shape runs `eager` instead."""

    def __init__(self, compiled: Callable[..., Any], eager: nn.Module) -> None:
        super().__init__()
        self.eager = eager  # the module as built, for comparisons and benchmarks
        self.compiled = compiled

    def forward(self, features: dict[str, Tensor]) -> Any:
        with torch.compiler.set_stance(SERVING_STANCE):
            return self.compiled(features)


def compile_variants(
    variants: dict[Variant, nn.Module], example_batch: ExampleBatch, sizes: Sequence[int], tolerance: float,
    mode: CompileMode, routed: frozenset[Variant] | None = None,
) -> tuple[dict[Variant, nn.Module], CompileReport]:
    """Every variant compiled and warmed at `sizes` as `mode` says (see the module docstring), or as it was with
    the reason. `routed`: the variants the fleet config sends requests to ("auto" compiles only those; None:
    all).

    Variants that share one module (a fallback to VanI) are compiled once and stay shared.
    """
    if mode == "off":
        return dict(variants), CompileReport(mode, {})
    done: dict[int, tuple[nn.Module, CompileOutcome]] = {}
    outcomes: dict[Variant, CompileOutcome] = {}
    compiled: dict[Variant, nn.Module] = {}
    for variant, module in variants.items():
        if mode == "auto" and routed is not None and variant not in routed:
            compiled[variant], outcomes[variant] = module, CompileOutcome(False, 0.0, NOT_ROUTED)
            continue
        if id(module) not in done:
            done[id(module)] = compile_variant(variant, module, example_batch, sizes, tolerance,
                                               check_speed=mode == "auto")
        compiled[variant], outcomes[variant] = done[id(module)]
    return compiled, CompileReport(mode, outcomes)


def compile_variant(
    variant: Variant, module: nn.Module, example_batch: ExampleBatch, sizes: Sequence[int], tolerance: float,
    check_speed: bool = False,
) -> tuple[nn.Module, CompileOutcome]:
    """`module` compiled by inductor and checked against itself at `sizes` (and, with `check_speed`, faster than
    itself there); `module` itself when that fails."""
    started = time.perf_counter()
    try:
        compiled, batches = _compile_and_check(module, example_batch, sizes, tolerance)
    except Exception as exc:  # a compiler error of any kind: serve the variant as built
        seconds = time.perf_counter() - started
        reason = _first_line(exc)
        logger.warning("variant %s served uncompiled (after %.1fs): %s", variant.value, seconds, reason)
        return module, CompileOutcome(False, seconds, reason)
    speed = measure_speed(compiled, module, batches) if check_speed else None
    seconds = time.perf_counter() - started
    if speed is not None and not is_faster(speed):
        reason = "not faster than uncompiled at the warm-up sizes: " + _speed_text(speed)
        logger.info("variant %s served uncompiled (checked in %.1fs): %s", variant.value, seconds, reason)
        return module, CompileOutcome(False, seconds, reason, speed)
    logger.info("variant %s compiled (inductor) and checked in %.1fs%s", variant.value, seconds,
                f": {_speed_text(speed)}" if speed else "")
    return compiled, CompileOutcome(True, seconds, None, speed)


def measure_speed(compiled: nn.Module, module: nn.Module, batches: Sequence[dict[str, Tensor]]
                  ) -> dict[int, dict[str, float]]:
    """N -> median milliseconds per call of the compiled and the uncompiled module, interleaved."""
    speed: dict[int, dict[str, float]] = {}
    for batch in batches:
        calls: dict[str, Callable[[], object]] = {"compiled": functools.partial(compiled, batch),
                                                  "uncompiled": functools.partial(module, batch)}
        medians = interleaved_medians(calls, repeats=SPEED_REPEATS, warmup=1)
        speed[_candidates(batch)] = {name: round(seconds * 1e3, 3) for name, seconds in medians.items()}
    return speed


def is_faster(speed: dict[int, dict[str, float]]) -> bool:
    """Compiled pays when the geometric mean of its time ratios over the warm-up sizes is below 1: each size
    stands for part of the traffic and counts alike, and one size's noise on a busy machine moves the mean less
    than it would move a sum dominated by the largest N."""
    ratios = [t["compiled"] / t["uncompiled"] for t in speed.values()]
    return math.prod(ratios) ** (1 / len(ratios)) < 1.0


def _speed_text(speed: dict[int, dict[str, float]]) -> str:
    return ", ".join(f"N={n} {t['compiled']:g} vs {t['uncompiled']:g} ms" for n, t in sorted(speed.items()))


class NotEquivalent(RuntimeError):
    """The compiled module's scores differ from the uncompiled module's beyond the tolerance."""


def _compile_and_check(
    module: nn.Module, example_batch: ExampleBatch, sizes: Sequence[int], tolerance: float
) -> tuple[CompiledVariant, list[dict[str, Tensor]]]:
    with torch._inductor.config.patch(INDUCTOR_CONFIG):
        return _compile_and_check_now(module, example_batch, sizes, tolerance)


def _compile_and_check_now(
    module: nn.Module, example_batch: ExampleBatch, sizes: Sequence[int], tolerance: float
) -> tuple[CompiledVariant, list[dict[str, Tensor]]]:
    compiled = _compiled_module(module)
    generator = torch.Generator().manual_seed(COMPILE_SEED)
    batches = [example_batch(n, generator) for n in sorted(set(sizes), reverse=True)]
    # largest first: the first call compiles the dynamic-N graph, with the candidate leaves marked dynamic
    for batch in batches:
        if _candidates(batch) > 1:
            _mark_candidates_dynamic(batch)
        with torch.inference_mode():  # the mode requests are scored in: the compiled guards check it
            result = compare(compiled(batch), module(batch), tolerance)
        if not result.equivalent:
            raise NotEquivalent(f"compiled scores differ from uncompiled at N={_candidates(batch)}: max "
                                f"|difference| {result.max_difference:.3g} (tolerance {tolerance})")
    for batch in batches:  # every warm-up size now runs a compiled graph, or this raises
        with torch.inference_mode(), torch.compiler.set_stance("fail_on_recompile"):
            compiled(batch)
    return CompiledVariant(compiled, module), batches


def _compiled_module(module: nn.Module) -> nn.Module:
    """The variant with its graph compiled: a GraphRunner's own fx graph (its own code object, hence its own
    compile cache, whatever other variants and versions compile), any other module whole."""
    if isinstance(module, GraphRunner):
        graph = cast(nn.Module, torch.compile(module.graph_module, backend="inductor", dynamic=False))
        return GraphRunner(graph, module.layout, module.out_spec)
    return cast(nn.Module, torch.compile(module, backend="inductor", dynamic=False))


def _candidates(features: dict[str, Tensor]) -> int:
    return max((t.size(0) for t in features.values() if t.dim() > 0), default=1)


def _mark_candidates_dynamic(features: dict[str, Tensor]) -> None:
    """Dim 0 of every candidate leaf (batch N > 1) is the symbolic candidate batch; user leaves are at 1."""
    for tensor in features.values():
        if tensor.dim() > 0 and tensor.size(0) > 1:
            torch._dynamo.mark_dynamic(tensor, 0)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:REASON_CHARS]
