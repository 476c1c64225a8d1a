"""Every registered architecture at its default sizes: VanI / UOI / MaRI at N candidates, one run.

    python -m bench.architectures [--n 1000] [--repeats 20] [--out docs/architectures.md]

Weights are freshly initialized (timing does not depend on training); variants come from the engine and
are timed with service.benchmark (same weights and inputs, interleaved, warmed up, median).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from service.benchmark import bench_variants, format_rows
from service.models.registry import ARCHITECTURES
from service.serving.build import build_variants


def bench_architecture(name: str, n: int, repeats: int, seed: int) -> list:
    arch = ARCHITECTURES[name]
    config = arch.default_config()
    torch.manual_seed(seed)
    model = arch.build(config).eval()
    schema = config.schema()
    built = build_variants(model, [f.name for f in schema.user_features], schema.example_batch, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    return bench_variants(built, lambda k: schema.example_batch(k, generator), [n], repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--archs", default=",".join(ARCHITECTURES))
    parser.add_argument("--out", type=Path, default=None, help="write a markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = ["| architecture | variant | median ms | speedup vs VanI | FLOPs ratio | speedup / FLOPs ratio | GFLOP/s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name in args.archs.split(","):
        rows = bench_architecture(name, args.n, args.repeats, args.seed)
        print(f"== {name}\n{format_rows(rows)}", flush=True)
        for r in rows:
            lines.append(
                f"| {name} | {r.variant} | {r.median_ms:.1f} | {r.speedup_vs_vani:.2f}x | "
                f"{r.flops_ratio_vs_vani:.2f}x | {r.speedup_over_flops_ratio:.2f} | {r.gflops_per_s:.1f} |"
            )
    if args.out:
        command = f"python -m bench.architectures --n {args.n} --repeats {args.repeats} --threads {args.threads}"
        header = (f"Command: `{command}`"
                  f" (fresh weights, N = {args.n}, torch threads {args.threads}).\n\n")
        args.out.write_text(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
