"""What RANKER_COMPILE=inductor buys: one variant of a stored model, as built and compiled, timed interleaved.

    python -m bench.compile_speedup --model model_store/default --variant mari --n 100,1000 --threads 1

The variant is compiled exactly as the service compiles it (service.serving.compile.compile_variant: dynamic
candidate batch, warmed at every N measured and at N = 1, checked against itself uncompiled), then both run
at each N through service.benchmark.interleaved_medians. Prints a table, or JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from service.benchmark import interleaved_medians
from service.engine import Variant
from service.engine.equivalence import SCORES, max_difference
from service.serving.build import build_variants
from service.serving.compile import CompiledVariant, compile_variant
from service.store import load_artifact

MEASURE_SEED = 7


def measure(model: Path, variant: Variant, ns: list[int], repeats: int) -> dict[str, object]:
    loaded = load_artifact(model)
    started = time.perf_counter()
    built = build_variants(loaded.model, loaded.manifest.user_features, loaded.schema.example_batch,
                           variants=(Variant.VANI, variant))[variant]
    build_s = time.perf_counter() - started
    compiled, outcome = compile_variant(variant, built.module, loaded.schema.example_batch, (1, *ns),
                                        SCORES.float32)
    if not isinstance(compiled, CompiledVariant):
        raise SystemExit(f"{variant.value} did not compile: {outcome.reason}")
    rows = []
    for n in ns:
        batch = loaded.schema.example_batch(n, torch.Generator().manual_seed(MEASURE_SEED))
        medians = interleaved_medians({"eager": lambda b=batch: built.module(b),
                                       "inductor": lambda b=batch: compiled(b)}, repeats=repeats)
        with torch.inference_mode():
            difference = max_difference(compiled(batch), built.module(batch))
        rows.append({"n": n, "eager_ms": round(medians["eager"] * 1e3, 3),
                     "inductor_ms": round(medians["inductor"] * 1e3, 3),
                     "speedup": round(medians["eager"] / medians["inductor"], 3), "max_difference": difference})
    return {"model": str(loaded.path), "variant": variant.value, "threads": torch.get_num_threads(),
            "repeats": repeats, "build_s": round(build_s, 2), "compile_s": round(outcome.seconds, 2), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compile_speedup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("model_store/default"))
    parser.add_argument("--variant", type=Variant, default=Variant.MARI)
    parser.add_argument("--n", type=lambda t: [int(n) for n in t.split(",") if n], default=[100, 1000])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (before compiling)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args.model, args.variant, args.n, args.repeats)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']} {result['variant']}, {result['threads']} thread(s), {result['repeats']} interleaved "
          f"repeats; build {result['build_s']} s, compile + check {result['compile_s']} s")
    print("| N | eager ms | inductor ms | speedup | max abs difference |\n|---|---|---|---|---|")
    for row in result["rows"]:  # type: ignore[attr-defined]
        print(f"| {row['n']} | {row['eager_ms']} | {row['inductor_ms']} | {row['speedup']}x | "
              f"{row['max_difference']:.2g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
