"""How close each variant already runs to this core's matrix-multiply speed: what is left to gain in the model.

    python -m bench.model_bound --model model_store/default [--sizes 50,100,128,200,1000] [--repeats 41]

Why: a server cannot answer faster than its model, and bench.peers' small-mix targets ask this service for more
than 3x the peers' capacity where the model-only ceiling (docs/peers.md) leaves little room. Whether a faster
model is still to be had is a question of arithmetic: the FLOPs a variant does per request (service/engine/flops.py,
the same count /v1/models reports) over its time per call give its rate, and a large square fp32 matmul on the
same thread gives the rate this core reaches at best. A variant near that rate can only get faster by doing
fewer FLOPs, which MaRI already does as far as equivalence allows (the user side once), or by lower precision,
which changes scores.

Per size N: each built variant's median ms per call (interleaved, after a warm-up, service.benchmark), its FLOPs,
GFLOP/s, and that rate as a share of the core's; the share of its time spent in matrix multiplies (torch.profiler
self time of addmm/mm/bmm/linear over all self time). One torch thread, the variants as built (uncompiled).
"""

from __future__ import annotations

import argparse
import functools
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from service.benchmark import interleaved_medians
from service.engine import Variant
from service.serving.build import build_variants
from service.store.artifact import load_artifact

MATMULS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")
PEAK_SIZE = 1024  # a square fp32 matmul this large runs at the core's best GEMM rate (blocked, cache-resident)


def core_gflops(repeats: int) -> float:
    """GFLOP/s of a PEAK_SIZE square fp32 matmul on this thread: the best rate the model's GEMMs could reach."""
    a, b = torch.randn(PEAK_SIZE, PEAK_SIZE), torch.randn(PEAK_SIZE, PEAK_SIZE)
    seconds = interleaved_medians({"mm": functools.partial(torch.mm, a, b)}, repeats=repeats, warmup=3)["mm"]
    return 2 * PEAK_SIZE**3 / seconds / 1e9


def matmul_share(module: torch.nn.Module, batch: dict[str, torch.Tensor], calls: int = 10) -> float:
    """Share of the module's self CPU time spent in matrix multiplies (torch.profiler, `calls` calls)."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            module(batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / total if total else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("model_store/default"))
    parser.add_argument("--sizes", default="50,100,128,200,1000", help="candidate counts N, comma-separated")
    parser.add_argument("--repeats", type=int, default=41, help="timed calls per variant and size")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    artifact = load_artifact(args.model)
    built = build_variants(artifact.model, artifact.manifest.user_features, artifact.schema.example_batch)
    peak = core_gflops(args.repeats)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread; "
          f"a {PEAK_SIZE}x{PEAK_SIZE} fp32 matmul: {peak:.1f} GFLOP/s (the core's GEMM rate)")
    print("| N | variant | ms per call | MFLOP per call | GFLOP/s | share of the core's GEMM rate | time in matmuls |")
    print("|---|---|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    for n in (int(size) for size in args.sizes.split(",")):
        batch = artifact.schema.example_batch(n, generator)
        calls: dict[str, Callable[[], object]] = {v.value: functools.partial(built[v].module, batch) for v in Variant}
        medians = interleaved_medians(calls, repeats=args.repeats, warmup=3)
        for variant in Variant:
            flops, seconds = built[variant].flops(n), medians[variant.value]
            rate = None if flops is None else flops / seconds / 1e9
            print(f"| {n} | {variant.value} | {seconds * 1e3:.2f} | "
                  f"{'-' if flops is None else f'{flops / 1e6:.1f}'} | {'-' if rate is None else f'{rate:.1f}'} | "
                  f"{'-' if rate is None else f'{rate / peak:.0%}'} | "
                  f"{matmul_share(built[variant].module, batch):.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
