"""Every variant against the user's own eager model, per input convention, at N = 100 and 1000.

    python -m bench.conventions [--ns 100,1000] [--repeats 20] [--threads 1] [--only NAME] [--out docs/conventions.md]

The models are the ones the engine's tests are written on (tests/engine): a dict of named tensors (the
built-in MMoE at its default size), one flat column tensor (DeepCTR-style, wide & deep with index lists),
several positional tensors (DLRM-style; the README's own two-matrix example), and torchrec modules over a
KeyedJaggedTensor; and models written the way public libraries write them (tests/engine/library_models.py:
DeepCTR's matrix DCN, torch-rechub's MMOE and DIN, tiny and production size), which go the user's whole way:
package() -> the store's program -> loaded -> built as the service builds it. For each: the user's eager model
on tiled inputs (what serving it without this project costs), and VanI, UOI and MaRI on the same weights and
inputs, interleaved, warmed up, median of many runs; "fastest" is the quickest built form at that N.
"""

from __future__ import annotations

import argparse
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from service.benchmark import interleaved_medians
from service.engine import Reparameterized, Variant
from service.features.schema import FeatureSchema
from service.models.registry import get_architecture
from service.serving.build import build_variants
from service.store import load_artifact, package

VARIANTS = (Variant.VANI, Variant.UOI, Variant.MARI)
PRODUCTION_SIZES = {"embedding_dim": 16, "hidden": (512, 256)}  # the tests' models are deliberately tiny


@dataclass(frozen=True)
class Case:
    name: str
    convention: str
    adapter: nn.Module  # the user's adapter around their model: features dict -> model inputs -> scores
    make_inputs: Callable[[int, torch.Generator], dict[str, Tensor]]  # user leaves at batch 1
    user_inputs: list[str]
    schema: FeatureSchema | None = None  # given: measured through package() -> store -> the service's build
    tasks: tuple[str, ...] = ()


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


def library_cases() -> list[Case]:
    from tests.engine.library_models import MODELS, SIZES, randomize_weights

    cases = []
    for name, library in MODELS.items():
        for size in SIZES:
            model = randomize_weights(library.build(size), torch.Generator().manual_seed(zlib.crc32(name.encode())))
            schema = library.schema(size)
            cases.append(Case(f"{name} ({size})", f"{library.library}-shaped", model.eval(),
                              lambda n, g, schema=schema: schema.example_batch(n, g), library.user_features(size),
                              schema, library.tasks))
    return cases


def build(case: Case, store: Path) -> dict[Variant, Reparameterized]:
    """The variants as the service builds them: from the stored program when the case has a schema."""
    if case.schema is None:
        return build_variants(case.adapter, case.user_inputs, case.make_inputs, variants=VARIANTS, seed=0)
    name = zlib.crc32(case.name.encode())
    package(case.adapter, case.schema.example_batch(8), case.schema, tasks=list(case.tasks), store=store,
            name=f"m{name}")
    loaded = load_artifact(store / f"m{name}")
    return build_variants(loaded.model, loaded.user_features, case.make_inputs, variants=VARIANTS, seed=0)


def measure(case: Case, built: dict[Variant, Reparameterized], n: int, repeats: int,
            warmup: int) -> dict[str, float | str | int]:
    generator = torch.Generator().manual_seed(n)
    inputs = case.make_inputs(n, generator)
    tiled = _tile(inputs, case.user_inputs, n)
    calls = {"eager": lambda: case.adapter(tiled)}
    calls.update({v.value: (lambda v=v: built[v].module(inputs)) for v in VARIANTS})
    medians = interleaved_medians(calls, repeats, warmup)
    flops = {v: built[v].flops(n) for v in VARIANTS}
    fastest = min((v.value for v in VARIANTS), key=lambda v: medians[v])
    return {
        "model": case.name, "convention": case.convention, "n": n, "stored": case.schema is not None,
        **{f"{name}_ms": seconds * 1e3 for name, seconds in medians.items()},
        "vani_vs_eager": medians["eager"] / medians["vani"], "mari_vs_eager": medians["eager"] / medians["mari"],
        "fastest": fastest, "fastest_vs_eager": medians["eager"] / medians[fastest],
        "flops_ratio": (flops[Variant.VANI] / flops[Variant.MARI]) if flops[Variant.MARI] else float("nan"),
        "mari_runs_as": built[Variant.MARI].report.variant.value,
    }


def format_table(rows: list[dict]) -> str:
    lines = ["| convention | model | N | eager ms | VanI ms | UOI ms | MaRI ms | VanI vs eager | MaRI vs eager | "
             "fastest | fastest vs eager | FLOPs ratio VanI/MaRI |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        runs_as = "" if r["mari_runs_as"] == "mari" else f" (runs as {r['mari_runs_as']})"
        stored = " (stored)" if r["stored"] else ""
        lines.append(f"| {r['convention']} | {r['model']}{stored}{runs_as} | {r['n']} | {r['eager_ms']:.2f} | "
                     f"{r['vani_ms']:.2f} | {r['uoi_ms']:.2f} | {r['mari_ms']:.2f} | {r['vani_vs_eager']:.2f}x | "
                     f"{r['mari_vs_eager']:.2f}x | {r['fastest']} | {r['fastest_vs_eager']:.2f}x | "
                     f"{r['flops_ratio']:.2f}x |")
    return "\n".join(lines) + ("\n\n(stored): packaged with package(), loaded from the store and built as the "
                               "service builds it; the others are built from the live module.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ns", default="100,1000", help="candidate counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="only the models whose name contains this")
    parser.add_argument("--out", type=Path, default=None, help="write the table as markdown to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ns = [int(n) for n in args.ns.split(",")]
    cases = dict_cases() + flat_cases() + positional_cases() + torchrec_cases() + library_cases()
    rows = []
    with tempfile.TemporaryDirectory() as store:
        for case in (c for c in cases if args.only in c.name):
            built = build(case, Path(store))
            rows += [measure(case, built, n, args.repeats, args.warmup) for n in ns]
    table = format_table(rows)
    print(table)
    if args.out:
        command = f"python -m bench.conventions --ns {args.ns} --repeats {args.repeats} --threads {args.threads}"
        args.out.write_text(f"# MaRI vs the user's eager model, per input convention\n\n`{command}`, torch "
                            f"{torch.__version__}, {args.threads} torch threads, median of {args.repeats} "
                            f"interleaved runs after {args.warmup} warm-up.\n\n{table}\n")


if __name__ == "__main__":
    main()
