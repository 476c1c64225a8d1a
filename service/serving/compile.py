"""Compiled variants (RANKER_COMPILE=inductor): each built variant through torch.compile, at start-up.

A variant is compiled with a dynamic candidate batch: the candidate leaves of the first warm-up call are
marked dynamic in dim 0 (user leaves stay at batch 1, every other size stays static), so one graph serves
every N >= 2; N = 1 gets its own graph (torch specializes sizes 0 and 1). Both are compiled here, before
/readyz turns ready, by running the warm-up sizes. Every compiled module is checked against its own
uncompiled module at those sizes (equivalence policy, docs/ARCHITECTURE.md section 3); one that fails to
compile or is not equivalent is served uncompiled, and its outcome says why (`/v1/models` "compile").

While serving, a call that would need a new graph (an input shape never seen at warm-up) runs the
uncompiled graph instead of compiling in the request path (stance "eager_on_recompile").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from service.engine import Variant
from service.engine.equivalence import compare
from service.engine.pipeline import GraphRunner

logger = logging.getLogger(__name__)

CompileMode = Literal["off", "inductor"]
ExampleBatch = Callable[[int, torch.Generator], dict[str, Tensor]]  # (n candidates, generator) -> features
SERVING_STANCE = "eager_on_recompile"  # never compile in the request path
COMPILE_SEED = 20260224  # fixed check inputs: a compile check is reproducible
REASON_CHARS = 300  # /v1/models shows the first line of a compile error, cut to this length


@dataclass(frozen=True)
class CompileOutcome:
    """What compiling one variant gave: compiled or not (and why not), and the seconds it took."""

    compiled: bool
    seconds: float
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"compiled": self.compiled, "seconds": round(self.seconds, 3), "reason": self.reason}


@dataclass(frozen=True)
class CompileReport:
    """The compile mode and every variant's outcome, as /v1/models shows it."""

    mode: CompileMode
    variants: dict[Variant, CompileOutcome]

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "variants": {v.value: o.to_dict() for v, o in self.variants.items()}}


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
    mode: CompileMode,
) -> tuple[dict[Variant, nn.Module], CompileReport]:
    """Every variant compiled (mode "inductor") and warmed at `sizes`, or as it was with the reason.

    Variants that share one module (a fallback to VanI) are compiled once and stay shared.
    """
    if mode == "off":
        return dict(variants), CompileReport(mode, {})
    done: dict[int, tuple[nn.Module, CompileOutcome]] = {}
    for variant, module in variants.items():
        if id(module) not in done:
            done[id(module)] = compile_variant(variant, module, example_batch, sizes, tolerance)
    compiled = {variant: done[id(module)][0] for variant, module in variants.items()}
    outcomes = {variant: done[id(module)][1] for variant, module in variants.items()}
    return compiled, CompileReport(mode, outcomes)


def compile_variant(
    variant: Variant, module: nn.Module, example_batch: ExampleBatch, sizes: Sequence[int], tolerance: float
) -> tuple[nn.Module, CompileOutcome]:
    """`module` compiled by inductor and checked against itself at `sizes`; `module` itself when that fails."""
    started = time.perf_counter()
    try:
        compiled = _compile_and_check(module, example_batch, sizes, tolerance)
    except Exception as exc:  # a compiler error of any kind: serve the variant as built
        seconds = time.perf_counter() - started
        reason = _first_line(exc)
        logger.warning("variant %s served uncompiled (after %.1fs): %s", variant.value, seconds, reason)
        return module, CompileOutcome(False, seconds, reason)
    seconds = time.perf_counter() - started
    logger.info("variant %s compiled (inductor) and checked in %.1fs", variant.value, seconds)
    return compiled, CompileOutcome(True, seconds)


class NotEquivalent(RuntimeError):
    """The compiled module's scores differ from the uncompiled module's beyond the tolerance."""


def _compile_and_check(
    module: nn.Module, example_batch: ExampleBatch, sizes: Sequence[int], tolerance: float
) -> CompiledVariant:
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
    return CompiledVariant(compiled, module)


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
