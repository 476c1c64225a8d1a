"""Every variant against the user's own eager model, per input convention, at N = 100 and 1000.

    python -m bench.conventions [--ns 100,1000] [--repeats 20] [--threads 1] [--only NAME] [--cost-rule]

The models are the ones the engine's tests are written on (tests/engine): a dict of named tensors (the
built-in MMoE at its default size), one flat column tensor (DeepCTR-style, wide & deep with index lists),
several positional tensors (DLRM-style; the README's own two-matrix example), and torchrec modules over a
KeyedJaggedTensor; and models written the way public libraries write them (tests/engine/library_models.py:
DeepCTR's matrix DCN, torch-rechub's MMOE and DIN, tiny and production size), which go the user's whole way:
package() -> the store's program -> loaded -> built as the service builds it. For each: the user's eager model
on tiled inputs (what serving it without this project costs), and VanI, UOI and MaRI on the same weights and
inputs, interleaved, warmed up, median of many runs; "fastest" is the quickest built form at that N in this
run, "auto" the service's default: the form its start-up measurement (service/serving/fastest.py, at the
default warm-up sizes) picked for N, timed in the same interleaving. --cost-rule also times MaRI built with the
split cost rule (SplitOptions(min_saved_flops=SPLIT_PAYS_FLOPS)) on the models where the rule leaves a site whole.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from service.benchmark import interleaved_medians
from service.engine import Reparameterized, SplitOptions, Variant
from service.engine.split_matmuls import SPLIT_PAYS_FLOPS
from service.features.schema import FeatureSchema
from service.models.registry import get_architecture
from service.serving.build import build_variants
from service.serving.fastest import FastestForms, measure_forms
from service.serving.settings import Settings
from service.store import load_artifact, package

VARIANTS = (Variant.VANI, Variant.UOI, Variant.MARI)
PRODUCTION_SIZES = {"embedding_dim": 16, "hidden": (512, 256)}  # the tests' models are deliberately tiny
WARMUP_SIZES: tuple[int, ...] = Settings.model_fields["warmup_candidates"].default  # what `auto` is measured at
COST_RULE = SplitOptions(min_saved_flops=SPLIT_PAYS_FLOPS)
LEFT_WHOLE = "left whole by the cost rule"


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


def build(case: Case, store: Path, cost_rule: bool = False) -> dict[str, Reparameterized]:
    """The variants as the service builds them: from the stored program when the case has a schema. With
    `cost_rule`, also "mari_rule": MaRI built with the split cost rule, when the rule leaves a site whole."""
    if case.schema is None:
        model, user_inputs = case.adapter, case.user_inputs
    else:
        name = zlib.crc32(case.name.encode())
        package(case.adapter, case.schema.example_batch(8), case.schema, tasks=list(case.tasks), store=store,
                name=f"m{name}")
        loaded = load_artifact(store / f"m{name}")
        model, user_inputs = loaded.model, loaded.user_features
    built = {v.value: r for v, r in build_variants(model, user_inputs, case.make_inputs, variants=VARIANTS,
                                                   seed=0).items()}
    if cost_rule:
        ruled = build_variants(model, user_inputs, case.make_inputs, variants=(Variant.MARI,), seed=0,
                               options=COST_RULE)[Variant.MARI]
        if any(LEFT_WHOLE in (c.reason or "") for c in ruled.report.not_rewritten):
            built["mari_rule"] = ruled
    return built


def measure_auto(case: Case, built: dict[str, Reparameterized]) -> FastestForms:
    """What the service's start-up measurement picks per size (service/serving/fastest.py)."""
    forms = {v: built[v.value].module for v in VARIANTS}
    return measure_forms(forms, case.make_inputs, WARMUP_SIZES)


def measure(case: Case, built: dict[str, Reparameterized], auto: FastestForms, n: int, repeats: int,
            warmup: int) -> dict[str, float | str | int]:
    generator = torch.Generator().manual_seed(n)
    inputs = case.make_inputs(n, generator)
    tiled = _tile(inputs, case.user_inputs, n)
    calls = {"eager": lambda: case.adapter(tiled)}
    calls.update({name: (lambda name=name: built[name].module(inputs)) for name in built})
    calls["auto"] = lambda: built[auto.variant_for(n).value].module(inputs)  # resolved per call, as served
    medians = interleaved_medians(calls, repeats, warmup)
    flops = {v: built[v.value].flops(n) for v in VARIANTS}
    fastest = min((v.value for v in VARIANTS), key=lambda v: medians[v])
    return {
        "model": case.name, "convention": case.convention, "n": n, "stored": case.schema is not None,
        **{f"{name}_ms": seconds * 1e3 for name, seconds in medians.items()},
        "vani_vs_eager": medians["eager"] / medians["vani"], "mari_vs_eager": medians["eager"] / medians["mari"],
        "fastest": fastest, "fastest_vs_eager": medians["eager"] / medians[fastest],
        "auto_form": auto.variant_for(n).value, "auto_vs_eager": medians["eager"] / medians["auto"],
        "auto_measured_s": auto.seconds,
        "flops_ratio": (flops[Variant.VANI] / flops[Variant.MARI]) if flops[Variant.MARI] else float("nan"),
        "mari_runs_as": built[Variant.MARI.value].report.variant.value,
        "rule_left_whole": sum(LEFT_WHOLE in (c.reason or "") for c in built["mari_rule"].report.not_rewritten)
        if "mari_rule" in built else 0,
    }


def format_table(rows: list[dict]) -> str:
    lines = ["| convention | model | N | eager ms | VanI ms | UOI ms | MaRI ms | auto ms | VanI vs eager | "
             "MaRI vs eager | auto (form) vs eager | fastest | fastest vs eager | FLOPs ratio VanI/MaRI |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        runs_as = "" if r["mari_runs_as"] == "mari" else f" (runs as {r['mari_runs_as']})"
        stored = " (stored)" if r["stored"] else ""
        lines.append(f"| {r['convention']} | {r['model']}{stored}{runs_as} | {r['n']} | {r['eager_ms']:.2f} | "
                     f"{r['vani_ms']:.2f} | {r['uoi_ms']:.2f} | {r['mari_ms']:.2f} | {r['auto_ms']:.2f} | "
                     f"{r['vani_vs_eager']:.2f}x | {r['mari_vs_eager']:.2f}x | "
                     f"{r['auto_vs_eager']:.2f}x ({r['auto_form']}) | {r['fastest']} | {r['fastest_vs_eager']:.2f}x | "
                     f"{r['flops_ratio']:.2f}x |")
    return "\n".join(lines) + ("\n\n(stored): packaged with package(), loaded from the store and built as the "
                               "service builds it; the others are built from the live module. auto: the service's "
                               "default, the form its start-up measurement picked for N.")


def format_cost_rule(rows: list[dict]) -> str:
    """MaRI with and without the split cost rule, on the rows where the rule leaves a site whole."""
    ruled = [r for r in rows if r["rule_left_whole"]]
    if not ruled:
        return "The split cost rule leaves no site whole in any model measured."
    lines = ["| model | N | sites left whole | MaRI ms | MaRI with the rule ms | rule vs without |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['n']} | {r['rule_left_whole']} | {r['mari_ms']:.3f} | {r['mari_rule_ms']:.3f} | "
              f"{r['mari_ms'] / r['mari_rule_ms']:.2f}x |" for r in ruled]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ns", default="100,1000", help="candidate counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="only the models whose name contains this")
    parser.add_argument("--cost-rule", action="store_true",
                        help="also time MaRI built with the split cost rule where it leaves a site whole")
    parser.add_argument("--out", type=Path, default=None, help="write the table as markdown to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ns = [int(n) for n in args.ns.split(",")]
    cases = dict_cases() + flat_cases() + positional_cases() + torchrec_cases() + library_cases()
    rows = []
    with tempfile.TemporaryDirectory() as store:
        for case in (c for c in cases if args.only in c.name):
            built = build(case, Path(store), args.cost_rule)
            auto = measure_auto(case, built)
            rows += [measure(case, built, auto, n, args.repeats, args.warmup) for n in ns]
            print(format_table(rows[-len(ns):]).splitlines()[2:2 + len(ns)], file=sys.stderr, flush=True)
    table = format_table(rows)
    if args.cost_rule:
        table += "\n\n" + format_cost_rule(rows)
    print(table)
    print(f"auto's start-up measurement: {sum(r['auto_measured_s'] for r in rows) / len(ns):.1f} s in all, the "
          f"largest {max(r['auto_measured_s'] for r in rows):.2f} s")
    if args.out:
        command = f"python -m bench.conventions --ns {args.ns} --repeats {args.repeats} --threads {args.threads}"
        args.out.write_text(f"# MaRI vs the user's eager model, per input convention\n\n`{command}`, torch "
                            f"{torch.__version__}, {args.threads} torch threads, median of {args.repeats} "
                            f"interleaved runs after {args.warmup} warm-up.\n\n{table}\n")


if __name__ == "__main__":
    main()
