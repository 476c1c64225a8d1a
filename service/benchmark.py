"""Variant benchmark: same weights, same inputs, variants interleaved, warmed up, median of many runs.

Reports per variant and N the median latency, the speedup over VanI measured in the same run, the
FLOPs ratio to VanI, how close the speedup gets to that arithmetic bound, and achieved GFLOP/s.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from service.engine import Reparameterized, Variant


@dataclass
class BenchRow:
    variant: str
    runs_as: str
    n: int
    median_ms: float
    speedup_vs_vani: float
    flops: int | None
    flops_ratio_vs_vani: float | None
    speedup_over_flops_ratio: float | None  # 1.0 = the whole arithmetic saving became wall-clock time
    gflops_per_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def interleaved_medians(
    calls: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call, the calls interleaved and rotated each round so none always runs first."""
    order = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in order}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for name in order[i % len(order):] + order[: i % len(order)]:
                start = time.perf_counter()
                calls[name]()
                if i >= warmup:
                    samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_variants(
    built: dict[Variant, Reparameterized],
    make_inputs: Callable[[int], dict[str, Any]],
    ns: Sequence[int],
    repeats: int = 20,
    warmup: int = 3,
) -> list[BenchRow]:
    rows: list[BenchRow] = []
    order = list(built)
    for n in ns:
        inputs = make_inputs(n)
        calls: dict[str, Callable[[], object]] = {
            v.value: functools.partial(built[v].module, inputs) for v in order}
        by_name = interleaved_medians(calls, repeats, warmup)
        medians = {v: by_name[v.value] for v in order}
        vani_time = medians.get(Variant.VANI)
        vani_flops = built[Variant.VANI].flops(n) if Variant.VANI in built else None
        for variant in order:
            flops = built[variant].flops(n)
            speedup = vani_time / medians[variant] if vani_time else float("nan")
            ratio = vani_flops / flops if vani_flops and flops else None
            rows.append(
                BenchRow(
                    variant=variant.value,
                    runs_as=built[variant].report.variant.value,
                    n=n,
                    median_ms=medians[variant] * 1e3,
                    speedup_vs_vani=speedup,
                    flops=flops,
                    flops_ratio_vs_vani=ratio,
                    speedup_over_flops_ratio=speedup / ratio if ratio else None,
                    gflops_per_s=flops / medians[variant] / 1e9 if flops else None,
                )
            )
    return rows


def format_rows(rows: Sequence[BenchRow]) -> str:
    header = (f"{'variant':7s} {'N':>5s} {'median ms':>10s} {'speedup':>8s} {'FLOPs ratio':>11s} "
              f"{'speedup/ratio':>13s} {'GFLOP/s':>8s}")
    lines = [header, "-" * len(header)]
    for r in rows:
        ratio = f"{r.flops_ratio_vs_vani:.2f}x" if r.flops_ratio_vs_vani else "-"
        efficiency = f"{r.speedup_over_flops_ratio:.2f}" if r.speedup_over_flops_ratio else "-"
        gflops = f"{r.gflops_per_s:.1f}" if r.gflops_per_s else "-"
        name = r.variant if r.variant == r.runs_as else f"{r.variant}->{r.runs_as}"
        lines.append(
            f"{name:7s} {r.n:5d} {r.median_ms:10.2f} {r.speedup_vs_vani:7.2f}x {ratio:>11s} {efficiency:>13s} "
            f"{gflops:>8s}"
        )
    return "\n".join(lines)
