"""MaRI against the user's own eager model, per input convention, at one N (default 1000).

    python -m bench.conventions [--n 1000] [--repeats 20] [--threads 2] [--out docs/conventions.md]

The models are the ones the engine's tests are written on (tests/engine): a dict of named tensors (the
built-in MMoE at its default size), one flat column tensor (DeepCTR-style, wide & deep with index lists),
several positional tensors (DLRM-style; the README's own two-matrix example), and torchrec modules over a
KeyedJaggedTensor. For each: the user's eager model on tiled inputs (what serving it without this project
costs), and VanI, UOI and MaRI on the same weights and inputs, interleaved, warmed up, median of many runs.
"""

from __future__ import annotations

import argparse
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from service.benchmark import interleaved_medians
from service.engine import Variant
from service.models.registry import get_architecture
from service.serving.build import build_variants

VARIANTS = (Variant.VANI, Variant.UOI, Variant.MARI)
PRODUCTION_SIZES = {"embedding_dim": 16, "hidden": (512, 256)}  # the tests' models are deliberately tiny


@dataclass(frozen=True)
class Case:
    name: str
    convention: str
    adapter: nn.Module  # the user's adapter around their model: features dict -> model inputs -> scores
    make_inputs: Callable[[int, torch.Generator], dict[str, Tensor]]  # user leaves at batch 1
    user_inputs: list[str]


def _tile(features: dict[str, Tensor], users: list[str], n: int) -> dict[str, Tensor]:
    return {k: v.expand(n, *v.shape[1:]).contiguous() if k in users else v for k, v in features.items()}


def _seeded(name: str) -> None:
    torch.manual_seed(zlib.crc32(name.encode()))


def dict_cases() -> list[Case]:
    arch = get_architecture("mmoe")
    config = arch.default_config()
    _seeded("mmoe")
    model = arch.build(config).eval()
    schema = config.schema()
    return [Case("mmoe (default size)", "dict of tensors", model, lambda n, g: schema.example_batch(n, g),
                 [spec.name for spec in schema.user_features])]


def flat_cases() -> list[Case]:
    from tests.engine import test_flat_tensor_convention as flat

    cases = []
    for name, (cls, columns, _) in flat.MODELS.items():
        for size, sizes in (("test size", {}), ("production size", PRODUCTION_SIZES)):
            _seeded(f"{name}-{size}")
            model = cls(columns, **sizes).eval()
            adapter = flat.FlatTensorAdapter(model, [column[0] for column in columns])
            users = [column[0] for column in columns if column[1]]
            cases.append(Case(f"{name} ({size})", "one flat column tensor", adapter,
                              lambda n, g, columns=columns: flat._features(columns, n, torch.float32, g), users))
    return cases


def positional_cases() -> list[Case]:
    from tests.engine import test_positional_convention as positional
    from tests.store import my_ranker

    cases = []
    for interaction in ("dot", "cat"):
        _seeded(f"dlrm-{interaction}")
        model = positional.DLRMStyle(positional.USER_DENSE + positional.ITEM_DENSE,
                                     positional.USER_VOCABS + positional.ITEM_VOCABS, interaction).eval()
        cases.append(Case(f"dlrm-style ({interaction})", "positional (dense, sparse)",
                          positional.TwoTensorAdapter(model),
                          lambda n, g: positional._features(n, torch.float32, g), list(positional.USERS)))
    model, _, schema, _ = my_ranker.build(seed=0)
    cases.append(Case("README wide & deep", "positional (dense, sparse)", model,
                      lambda n, g: schema.example_batch(n, g), [s.name for s in schema.user_features]))
    return cases


def torchrec_cases() -> list[Case]:
    from tests.engine import torchrec_models

    cases = []
    for name, case in torchrec_models.CASES.items():
        _seeded(f"torchrec-{name}")
        model = case.build().eval()
        cases.append(Case(f"torchrec {name}", "torchrec KeyedJaggedTensor", model,
                          lambda n, g, case=case: case.random_inputs(n, g), case.user_inputs))
    return cases


def measure(case: Case, n: int, repeats: int, warmup: int) -> dict[str, float | str]:
    built = build_variants(case.adapter, case.user_inputs, case.make_inputs, variants=VARIANTS, seed=0)
    generator = torch.Generator().manual_seed(0)
    inputs = case.make_inputs(n, generator)
    tiled = _tile(inputs, case.user_inputs, n)
    calls = {"eager": lambda: case.adapter(tiled)}
    calls.update({v.value: (lambda v=v: built[v].module(inputs)) for v in VARIANTS})
    medians = interleaved_medians(calls, repeats, warmup)
    flops = {v: built[v].flops(n) for v in VARIANTS}
    return {
        "model": case.name, "convention": case.convention,
        "eager_ms": medians["eager"] * 1e3, "vani_ms": medians["vani"] * 1e3,
        "uoi_ms": medians["uoi"] * 1e3, "mari_ms": medians["mari"] * 1e3,
        "mari_vs_eager": medians["eager"] / medians["mari"],
        "flops_ratio": (flops[Variant.VANI] / flops[Variant.MARI]) if flops[Variant.MARI] else float("nan"),
        "mari_runs_as": built[Variant.MARI].report.variant.value,
    }


def format_table(rows: list[dict], n: int) -> str:
    lines = ["| convention | model | eager ms | VanI ms | UOI ms | MaRI ms | MaRI vs eager | FLOPs ratio VanI/MaRI |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        runs_as = "" if r["mari_runs_as"] == "mari" else f" (runs as {r['mari_runs_as']})"
        lines.append(f"| {r['convention']} | {r['model']}{runs_as} | {r['eager_ms']:.2f} | {r['vani_ms']:.2f} | "
                     f"{r['uoi_ms']:.2f} | {r['mari_ms']:.2f} | {r['mari_vs_eager']:.2f}x | {r['flops_ratio']:.2f}x |")
    return "\n".join(lines) + f"\n\nN = {n} candidates per request."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the table as markdown to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = dict_cases() + flat_cases() + positional_cases() + torchrec_cases()
    rows = [measure(case, args.n, args.repeats, args.warmup) for case in cases]
    table = format_table(rows, args.n)
    print(table)
    if args.out:
        command = f"python -m bench.conventions --n {args.n} --repeats {args.repeats} --threads {args.threads}"
        args.out.write_text(f"# MaRI vs the user's eager model, per input convention\n\n`{command}`, torch "
                            f"{torch.__version__}, {args.threads} torch threads, median of {args.repeats} "
                            f"interleaved runs after {args.warmup} warm-up.\n\n{table}\n")


if __name__ == "__main__":
    main()
