"""rDCN vs DCNv2 (3 cross layers): holdout AUC on the same synthetic data, and FLOPs per request at N.

Both architectures are trained by `service.training.train.train_model` with the same seed, step budget and
optimiser settings on the same planted-signal data (same feature names, same sizes), then analysed by the
engine (`service.serving.build.build_variants`, then `Analysis(n, built).flops(variant)`) for VanI, UOI and MaRI.

    .venv/bin/python -m bench.rdcn_vs_dcn --seeds 0 1 2 --steps 500 --n 1000 --json rdcn_vs_dcn.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from service.engine import Analysis, Variant
from service.models import RankerConfig
from service.serving.build import build_variants
from service.training.train import train_model

ARCHITECTURES = ("dcnv2", "rdcn")


def flops_per_variant(model: nn.Module, config: RankerConfig, n: int) -> dict:
    schema = config.schema()
    users = [spec.name for spec in schema.user_features]
    analysis = Analysis(n, build_variants(model, users, schema.example_batch, seed=0))
    report = analysis.to_dict()
    return {
        "flops": {v.value: analysis.flops(v) for v in Variant},
        "runs_as": {name: row["runs_as"] for name, row in report["flops"].items()},
        "rewritten": [k["node"] for c in report["concats"] for k in c["consumers"] if k["rewritten"]],
        "not_rewritten": [f"{k['node']}: {k['reason']}" for c in report["concats"] for k in c["consumers"]
                          if not k["rewritten"]],
        "tiled_merges": [f"{m['node']} ({m['op']}) <- {', '.join(m['user_inputs'])}" for m in report["merges"]
                         if m["how"] == "tiled"],
    }


def run(seeds: list[int], steps: int, n: int) -> dict:
    results: dict = {"n": n, "steps": steps, "seeds": seeds, "runs": {}, "flops": {}}
    for architecture in ARCHITECTURES:
        runs = []
        for seed in seeds:
            result = train_model(architecture, seed=seed, steps=steps)
            runs.append({"seed": seed, **{k: result.metrics[k] for k in
                                          ("holdout_auc", "oracle_holdout_auc", "train_seconds", "final_train_loss")}})
            print(f"{architecture} seed {seed}: holdout AUC {runs[-1]['holdout_auc']} "
                  f"(oracle {runs[-1]['oracle_holdout_auc']}), {runs[-1]['train_seconds']:.1f} s", flush=True)
        results["runs"][architecture] = runs
        results["parameters"] = {**results.get("parameters", {}),
                                 architecture: sum(p.numel() for p in result.model.parameters())}
        # FLOPs do not depend on the weights: analyse the last trained model.
        results["flops"][architecture] = flops_per_variant(result.model, result.config, n)
    return results


def print_report(results: dict) -> None:
    print(f"\nholdout AUC (mean over seeds {results['seeds']}, {results['steps']} steps)")
    for architecture, runs in results["runs"].items():
        for task in runs[0]["holdout_auc"]:
            values = [r["holdout_auc"][task] for r in runs]
            spread = f" +- {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            print(f"  {architecture:6s} {task:10s} {statistics.mean(values):.4f}{spread}  per seed {values}")
    base = results["flops"]["dcnv2"]["flops"]["vani"]
    print(f"\nFLOPs per request at N = {results['n']} (ratio to DCNv2 VanI)")
    for name, row in results["flops"].items():
        for variant, flops in row["flops"].items():
            print(f"  {name:45s} {variant:5s} {flops / 1e6:10.1f} MFLOP  {flops / base:6.3f}  "
                  f"runs as {row['runs_as'][variant]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = run(args.seeds, args.steps, args.n)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
