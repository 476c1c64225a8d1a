"""The paper study's measurements: build VanI, UOI and MaRI (and MaRI on a fragmented layout) with the
engine, and time them with service.benchmark's one interleaved method (same weights and inputs, variants
interleaved and rotated, warm-up, median)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from bench.study_models import USER_INPUTS, StudyConfig, build_study_model, study_inputs
from service.benchmark import BenchRow, bench_variants, interleaved_medians
from service.engine import Reparameterized, SplitOptions, Variant, reparameterize, reparameterize_all

BUILD_BATCH = 8  # candidates in the example call the engine traces and verifies with
FRAGMENTED = "mari_fragmented"  # MaRI on the interleaved layout without layout reorganization
GEMM_TARGETS = (
    torch.ops.aten.linear.default,
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.matmul.default,
)


@dataclass(frozen=True)
class StudyPlan:
    base: StudyConfig
    n: int  # candidates per request for every sweep but the N sweep
    ns: tuple[int, ...]
    widths: tuple[int, ...]  # values of the user, item, cross and hidden width sweeps
    chunks: tuple[int, ...]
    repeats: int
    warmup: int
    quick: bool = False



SWEEPS = {  # axis -> axis label; "n" is the number of candidates, the others are StudyConfig fields
    "n": "N (candidates per request)",
    "user_width": "user width D_U",
    "item_width": "item width D_I",
    "cross_width": "cross width D_X",
    "hidden": "hidden width (MLP [h, h/2, 1])",
}


class StudyError(RuntimeError):
    """A variant the study needs did not build (the engine fell back to VanI), so its timing would lie."""


@dataclass
class SweepPoint:
    axis: str
    x: int
    rows: dict[str, BenchRow]  # by variant name

    def speedup(self, variant: str, baseline: str = "vani") -> float:
        return self.rows[baseline].median_ms / self.rows[variant].median_ms

    def flops_ratio(self, variant: str, baseline: str = "vani") -> float:
        return self.rows[baseline].flops / self.rows[variant].flops


@dataclass
class FragmentPoint:
    chunk: int
    median_ms: dict[str, float]  # vani, uoi, mari, mari_fragmented
    flops: dict[str, int]
    gemms: dict[str, int]

    def latency_ratio(self, variant: str, baseline: str) -> float:
        return self.median_ms[variant] / self.median_ms[baseline]


@dataclass
class StudyResult:
    plan: StudyPlan
    sweeps: dict[str, list[SweepPoint]] = field(default_factory=dict)
    fragmentation: list[FragmentPoint] = field(default_factory=list)
    seconds: float = 0.0
    load_average: float = 0.0  # 1-minute load average when the study started (other work on the cores)




def build_variants(config: StudyConfig) -> dict[Variant, Reparameterized]:
    model = build_study_model(config)
    built = reparameterize_all(model, (study_inputs(config, BUILD_BATCH),), USER_INPUTS)
    _require_built(built.values())
    return built


def build_fragmented(config: StudyConfig) -> Reparameterized:
    """MaRI without layout reorganization: one GEMM per contiguous concat part, as a fragmented layout forces."""
    model = build_study_model(config)
    options = SplitOptions(reorganize_layout=False)
    result = reparameterize(model, (study_inputs(config, BUILD_BATCH),), USER_INPUTS, Variant.MARI, options=options)
    _require_built([result])
    return result


def _require_built(results: Iterable[Reparameterized]) -> None:
    for r in results:
        if r.report.variant != r.report.requested:
            raise StudyError(f"{r.report.requested.value} ran as {r.report.variant.value}: {r.report.fallback_reason}")


def count_gemms(result: Reparameterized) -> int:
    return sum(1 for node in result.graph_module.graph.nodes if node.target in GEMM_TARGETS)


def _points(axis: str, xs: Sequence[int], rows: list[BenchRow], key: Callable[[BenchRow], int]) -> list[SweepPoint]:
    return [SweepPoint(axis, x, {r.variant: r for r in rows if key(r) == x}) for x in xs]


def run_study(plan: StudyPlan, log: Callable[[str], None] = print) -> StudyResult:
    started = time.perf_counter()
    result = StudyResult(plan, load_average=os.getloadavg()[0])
    base = build_variants(plan.base)
    log(f"N sweep {plan.ns}")
    rows = bench_variants(base, lambda n: study_inputs(plan.base, n), plan.ns, plan.repeats, plan.warmup)
    result.sweeps["n"] = _points("n", plan.ns, rows, lambda r: r.n)
    for axis in [a for a in SWEEPS if a != "n"]:
        points = []
        for x in plan.widths:
            config = plan.base.with_(**{axis: x})
            log(f"{axis} = {x}")
            built = base if config == plan.base else build_variants(config)
            rows = bench_variants(built, lambda n, c=config: study_inputs(c, n), [plan.n], plan.repeats, plan.warmup)
            points.append(SweepPoint(axis, x, {r.variant: r for r in rows}))
        result.sweeps[axis] = points
    for chunk in plan.chunks:
        log(f"fragmented layout, chunk = {chunk}")
        result.fragmentation.append(measure_fragmentation(plan.base.with_(chunk=chunk), plan))
    result.seconds = time.perf_counter() - started
    return result


def measure_fragmentation(config: StudyConfig, plan: StudyPlan) -> FragmentPoint:
    built = {v.value: r for v, r in build_variants(config).items()}
    built[FRAGMENTED] = build_fragmented(config)
    inputs = study_inputs(config, plan.n)
    seconds = interleaved_medians(
        {k: (lambda r=r: r.module(inputs)) for k, r in built.items()}, plan.repeats, plan.warmup
    )
    return FragmentPoint(
        config.chunk,
        {k: s * 1e3 for k, s in seconds.items()},
        {k: r.flops(plan.n) for k, r in built.items()},
        {k: count_gemms(r) for k, r in built.items()},
    )
