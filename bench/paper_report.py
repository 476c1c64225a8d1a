"""The paper study's report (<out>/paper_study.md): the method, the paper's figures beside this machine's,
where and why they differ, one table per sweep and the fragmentation table."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.paper_measure import FRAGMENTED, SWEEPS, FragmentPoint, StudyPlan, StudyResult, SweepPoint
from bench.paper_published import PAPER

NOISE_EFFICIENCY = 1.2  # MaRI-vs-UOI speedup / FLOPs ratio above this is timing noise, not arithmetic


def _x(v: float) -> str:
    return f"{v:.2f}x"


def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%"


def _at(points: list[Any], attr: str, value: int) -> Any:
    return next((p for p in points if getattr(p, attr) == value), None)


def sweep_table(points: list[SweepPoint], axis: str) -> list[str]:
    lines = [
        f"| {axis} | VanI ms | UOI ms | MaRI ms | UOI vs VanI | MaRI vs VanI | MaRI vs UOI | FLOPs VanI/MaRI "
        "| FLOPs UOI/MaRI | MaRI-vs-UOI speedup / FLOPs ratio | MaRI GFLOP/s |",
        "|" + "---:|" * 11,
    ]
    for p in points:
        mari = p.rows["mari"]
        lines.append(
            f"| {p.x} | {p.rows['vani'].median_ms:.2f} | {p.rows['uoi'].median_ms:.2f} | {mari.median_ms:.2f} "
            f"| {_x(p.speedup('uoi'))} | {_x(p.speedup('mari'))} | {_x(p.speedup('mari', 'uoi'))} "
            f"| {_x(p.flops_ratio('mari'))} | {_x(p.flops_ratio('mari', 'uoi'))} "
            f"| {p.speedup('mari', 'uoi') / p.flops_ratio('mari', 'uoi'):.2f} | {mari.gflops_per_s:.1f} |"
        )
    return lines


def fragmentation_table(points: list[FragmentPoint]) -> list[str]:
    lines = [
        "| chunk | GEMMs UOI / MaRI / fragmented | VanI ms | UOI ms | MaRI ms | fragmented ms | fragmented vs UOI "
        "| fragmented vs MaRI | MaRI vs UOI |",
        "|" + "---:|" * 9,
    ]
    for p in points:
        ms, g = p.median_ms, p.gemms
        lines.append(
            f"| {p.chunk} | {g['uoi']} / {g['mari']} / {g[FRAGMENTED]} | {ms['vani']:.2f} | {ms['uoi']:.2f} "
            f"| {ms['mari']:.2f} | {ms[FRAGMENTED]:.2f} | {_pct(p.latency_ratio(FRAGMENTED, 'uoi'))} "
            f"| {_pct(p.latency_ratio(FRAGMENTED, 'mari'))} | {_x(1 / p.latency_ratio('mari', 'uoi'))} |"
        )
    return lines


def headline_rows(result: StudyResult) -> list[str]:
    """Each published figure beside this machine's number for the same comparison."""
    every = [p for points in result.sweeps.values() for p in points]
    best = max(every, key=lambda p: p.speedup("mari", "uoi"))
    most = max(every, key=lambda p: p.flops_ratio("mari", "uoi"))
    large = [p for p in result.sweeps["n"] if p.x >= PAPER.large_n]
    hidden = result.sweeps["hidden"]
    frag = result.fragmentation
    chunk = _at(frag, "chunk", PAPER.chunk)
    efficiency = statistics.median(p.speedup("mari", "uoi") / p.flops_ratio("mari", "uoi") for p in every)
    rows = [
        ("max runtime speedup of MaRI", _x(PAPER.max_speedup),
         f"{_x(best.speedup('mari', 'uoi'))} vs UOI ({best.axis} = {best.x}); "
         f"{_x(max(p.speedup('mari') for p in every))} vs VanI"),
        ("max FLOPs reduction", _x(PAPER.max_flops_ratio),
         f"{_x(most.flops_ratio('mari', 'uoi'))} vs UOI ({most.axis} = {most.x}); "
         f"{_x(max(p.flops_ratio('mari') for p in every))} vs VanI"),
        (f"speedup at N >= {PAPER.large_n}, default sizes", f"about {_x(PAPER.speedup_large_n)}",
         ", ".join(f"N={p.x}: {_x(p.speedup('mari', 'uoi'))}" for p in large) or "(no such N in this run)"),
        ("speedup against hidden width", " -> ".join(f"{_x(v)} at {h}" for h, v in PAPER.speedup_by_hidden),
         " -> ".join(f"{_x(p.speedup('mari', 'uoi'))} at {p.x}" for p in hidden)),
        ("fragmented layout against UOI", _pct(PAPER.fragmented_vs_uoi),
         " / ".join(f"chunk {p.chunk}: {_pct(p.latency_ratio(FRAGMENTED, 'uoi'))}" for p in frag)),
        (f"chunk {PAPER.chunk}: fragmented MaRI against the original matmul (UOI)", _pct(PAPER.chunk_vs_original),
         _pct(chunk.latency_ratio(FRAGMENTED, "uoi")) if chunk else "(not measured)"),
        (f"chunk {PAPER.chunk}: fragmented MaRI against neat MaRI", _pct(PAPER.chunk_vs_neat_mari),
         _pct(chunk.latency_ratio(FRAGMENTED, "mari")) if chunk else "(not measured)"),
        ("speedup / FLOPs ratio (share of the arithmetic saving that becomes time)",
         f"{PAPER.max_speedup / PAPER.max_flops_ratio:.2f} (1.58 / 10.95, two maxima)",
         f"median {efficiency:.2f} over all sweep points (MaRI vs UOI)"),
    ]
    header = ["| published figure | paper | this machine (MaRI) |", "|---|---:|---|"]
    return header + [f"| {a} | {b} | {c} |" for a, b, c in rows]


def _efficiency(p: SweepPoint) -> float:
    return p.speedup("mari", "uoi") / p.flops_ratio("mari", "uoi")


def _span(points: list[SweepPoint]) -> str:
    first, last = points[0], points[-1]
    return (f"{_x(first.speedup('mari', 'uoi'))} at {first.x} to {_x(last.speedup('mari', 'uoi'))} at {last.x} "
            f"(FLOPs ratio {_x(first.flops_ratio('mari', 'uoi'))} to {_x(last.flops_ratio('mari', 'uoi'))})")


def _noise_note(points: list[SweepPoint]) -> list[str]:
    """Speedup well above the FLOPs ratio cannot come from compute-bound GEMMs: name those points as noise."""
    odd = [p for p in points if _efficiency(p) > NOISE_EFFICIENCY]
    if not odd:
        return []
    where = ", ".join(f"{p.axis} = {p.x} ({_efficiency(p):.2f})" for p in odd)
    return [f"**Noise.** Speedup above the FLOPs ratio by more than {NOISE_EFFICIENCY - 1:.0%} at {where}: a "
            "slow window for one variant's samples, not a real effect; rerun on a quiet machine.", ""]


def _differences_section(result: StudyResult) -> list[str]:
    """Where this machine differs from the paper and why; the numbers come from this run."""
    s, b = result.sweeps, result.plan.base
    every = [p for points in s.values() for p in points]
    large = [p for p in s["n"] if p.x >= PAPER.large_n] or s["n"][-1:]
    small = s["n"][0]
    hidden = s["hidden"]
    frag = result.fragmentation
    chunk = _at(frag, "chunk", PAPER.chunk) or frag[len(frag) // 2]
    vs_uoi = chunk.latency_ratio(FRAGMENTED, "uoi")
    neat_ms = [p.median_ms["mari"] for p in frag]
    frag_ms = [p.median_ms[FRAGMENTED] for p in frag]
    gflops = statistics.median(p.rows["uoi"].gflops_per_s for p in every)
    first_layer = (b.user_width + b.item_width + b.cross_width) / (b.item_width + b.cross_width)
    return [
        "## Where and why this machine differs from the paper",
        "",
        "**The arithmetic saving becomes time here.** The paper's headline pair (1.58x faster, 10.95x fewer FLOPs) "
        f"turns {PAPER.max_speedup / PAPER.max_flops_ratio:.0%} of the FLOPs saved into time; its hardware spent "
        "most of the latency on something other than arithmetic (kernel launches, memory traffic, framework "
        "overhead: typical of an accelerator at ranking sizes, where a 1000 x 1216 x 512 GEMM is at most tens of "
        "microseconds of work; this study did not measure one). On this machine's CPU cores the same GEMMs run at "
        f"about {gflops:.0f} GFLOP/s (median, UOI) and take milliseconds, so latency is proportional to FLOPs: "
        "MaRI's speedup over UOI divided by its FLOPs ratio has a median of "
        f"{statistics.median(map(_efficiency, every)):.2f} "
        "over all sweep points (a little above 1 is real: MaRI also skips UOI's N-row tile and concat copies, which "
        f"count no FLOPs), and at N >= {PAPER.large_n} MaRI is "
        f"{', '.join(_x(p.speedup('mari', 'uoi')) for p in large)} faster than UOI against a FLOPs ratio of "
        f"{_x(large[-1].flops_ratio('mari', 'uoi'))}, where the paper saw about 1.1x. The absolute speedups are "
        "therefore larger than the paper's, and they follow the FLOPs ratio, not the paper's curves.",
        "",
        f"**Small N is overhead-bound.** At N = {small.x} a call costs "
        f"{small.rows['mari'].median_ms:.2f} ms, mostly per-op dispatch of the graph, and MaRI is only "
        f"{_x(small.speedup('mari', 'uoi'))} faster than UOI for a {_x(small.flops_ratio('mari', 'uoi'))} FLOPs ratio "
        f"(efficiency {_efficiency(small):.2f}).",
        "",
        "**Widths move the FLOPs ratio, and the speedup follows it.** MaRI's saving is the user share of the "
        f"first layer: its FLOPs ratio is (D_U + D_I + D_X) / (D_I + D_X) = {first_layer:.1f}x at the defaults, "
        "diluted by the layers MaRI does not touch. MaRI vs UOI goes from "
        f"{_span(s['user_width'])} along D_U, from {_span(s['item_width'])} along D_I, and from "
        f"{_span(s['cross_width'])} along D_X.",
        "",
        "**Hidden width: the opposite trend to the paper's.** The paper's speedup rises from 1.10x at 64 to 1.58x at "
        f"2048; here it goes from {_span(hidden)}. In this model the hidden width also sizes the second layer "
        "(hidden x hidden/2), which MaRI leaves alone and which grows as hidden squared, so the whole-model FLOPs "
        f"ratio falls while the first layer's stays {first_layer:.1f}x (a single-layer study holds it constant). "
        "The paper's rising curve is most likely the other effect: a wider GEMM uses the hardware better, so more "
        "of the FLOPs saved turn into time. On CPU that effect is small: MaRI's efficiency (speedup / FLOPs ratio) "
        f"is {_efficiency(hidden[0]):.2f} at {hidden[0].x} and {_efficiency(hidden[-1]):.2f} at {hidden[-1].x}, "
        "far from the paper's 14%-and-rising, and it cannot offset the falling FLOPs ratio.",
        "",
        "**Fragmentation costs less here than the split saves, and reorganization removes it.** "
        "Without layout reorganization MaRI runs "
        f"one GEMM per contiguous concat part ({frag[-1].gemms[FRAGMENTED]} GEMMs at chunk {frag[-1].chunk}, "
        f"{frag[0].gemms[FRAGMENTED]} at chunk {frag[0].chunk}). At chunk {chunk.chunk} it is "
        f"{_pct(vs_uoi)} against UOI (paper: +69.4%) and {_pct(chunk.latency_ratio(FRAGMENTED, 'mari'))} against "
        f"neat MaRI (paper: +96.3%); from chunk {frag[-1].chunk} to {frag[0].chunk} the cost against neat MaRI grows "
        f"from {_pct(frag[-1].latency_ratio(FRAGMENTED, 'mari'))} to "
        f"{_pct(frag[0].latency_ratio(FRAGMENTED, 'mari'))}. "
        "Each user part is a batch-1 GEMV (pure dispatch, tens of microseconds) and each candidate part a thin "
        "N x chunk GEMM plus an N x hidden accumulation (memory-bound): small next to the milliseconds of "
        "arithmetic the split saves, so fragmented MaRI "
        f"{'still beats' if vs_uoi < 1 else 'loses to'} the original matmul here. On an accelerator the whole "
        "model takes well under a millisecond and every part is one more kernel launch of a nearly empty GEMM, "
        "so a few dozen parts can double the latency, as the paper's +96.3% suggests (not measured here). "
        "Reorganized MaRI gathers each side's weight rows once and runs one GEMM per side at every chunk size "
        f"({min(neat_ms):.1f} to {max(neat_ms):.1f} ms across chunk sizes in this run, fragmented "
        f"{min(frag_ms):.1f} to {max(frag_ms):.1f} ms), which is why the engine reorganizes by default.",
        "",
        *_noise_note(every),
        "**VanI vs UOI** differs only by the small user tower here "
        f"(UOI {_x(statistics.median(p.speedup('uoi') for p in every))} faster than VanI, median), by design: it "
        "keeps the study on the first layer, the paper's subject.",
        "",
    ]


def write_markdown(result: StudyResult, path: Path, figures: Sequence[Path], command: str, machine: str) -> Path:
    plan = result.plan
    lines = [
        "# The MaRI paper's offline study, reproduced on this machine",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M')} in {result.seconds:.0f} s. Machine: {machine}; "
        f"load average {result.load_average:.1f} on {os.cpu_count()} cores when it started.",
        "",
    ]
    if plan.quick:
        lines += [
            "> **Quick mode**: small sizes, few points, "
            f"{plan.repeats} repeats. The numbers below are noisy and only prove the pipeline runs; "
            "the study is `python -m bench.paper_study` on a quiet machine.",
            "",
        ]
    lines += _method_section(plan)
    lines += ["## The paper's figures beside this machine's", ""] + headline_rows(result) + [""]
    lines += _differences_section(result)
    for axis, points in result.sweeps.items():
        fixed = "" if axis == "n" else f" (N = {plan.n})"
        lines += [f"## Sweep: {SWEEPS[axis]}{fixed}", "", f"![{axis}](figures/paper_{axis}.png)", ""]
        lines += sweep_table(points, axis) + [""]
    lines += [
        f"## Layout fragmentation (N = {plan.n})",
        "",
        "The same model with the concat interleaving user and candidate columns in chunks (user chunk, candidate "
        "chunk, ...). *MaRI* reorganizes the layout (gathers each side's weight rows once, one GEMM per side); "
        "*fragmented* is `SplitOptions(reorganize_layout=False)`: one GEMM per contiguous part, summed. "
        "*UOI* is the original matmul: tile the user row, concat, one GEMM.",
        "",
        "![fragmentation](figures/paper_fragmentation.png)",
        "",
    ]
    lines += fragmentation_table(result.fragmentation) + [""]
    lines += [
        "## Reproduce",
        "",
        "```",
        "python -m bench.paper_study            # full study, <= 10 minutes on 2 quiet cores",
        "python -m bench.paper_study --quick    # small sizes, < 60 s, noisy: checks the pipeline only",
        "python -m pytest tests/bench           # the study runs end to end; "
        "fragmented MaRI has more GEMMs and equals VanI",
        "```",
        "",
        "Run it on an otherwise idle machine: the variants are interleaved, so background load biases no variant, "
        "but it widens every median.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def _method_section(plan: StudyPlan) -> list[str]:
    b = plan.base
    candidate = b.item_width + b.cross_width
    first_layer, widest = (b.user_width + candidate) / candidate, (max(plan.widths) + candidate) / candidate
    return [
        "## What is measured",
        "",
        "- **Model** (`bench/study_models.py`): dense user features (width D_U) through a small user tower "
        f"(D_U -> {b.user_tower} -> D_U), item (D_I) and cross (D_X) features, `torch.cat` -> MLP "
        "[hidden, hidden/2, 1] -> sigmoid; written for a batch of (user, item) rows, as trained.",
        "- **Variants** come only from the engine: `reparameterize_all(model, (example,), ['user'])` for VanI, UOI "
        "and MaRI, `reparameterize(..., Variant.MARI, options=SplitOptions(reorganize_layout=False))` for fragmented "
        "MaRI. Every variant is verified against VanI at build time; the study stops if one falls back to VanI.",
        "- **Mapping to the paper's terms**: UOI runs the user tower once and tiles the user row at the concat, then "
        "runs the original matmul on the full concat; MaRI splits that matmul (user GEMM once, candidate GEMM N "
        "times). So *MaRI vs UOI* is the paper's split-vs-original matmul comparison, and it is the number set "
        "beside the paper's; *vs VanI* also counts the user tower that UOI already saves.",
        "- **Timing**: every time is `service.benchmark.interleaved_medians` (same weights and inputs, variants "
        f"interleaved and rotated, {plan.warmup} warm-up rounds, median of {plan.repeats}): through "
        "`bench_variants` for the sweeps, directly for the fragmentation sweep's four variants. Speedup = ratio of "
        "medians from one run.",
        "- **FLOPs**: the engine's count on each variant's graph at that N (`Reparameterized.flops`).",
        "",
        "### Sizes chosen, and why",
        "",
        "| size | default | swept | why |",
        "|---|---:|---|---|",
        f"| D_U | {b.user_width} | {', '.join(map(str, plan.widths))} | "
        "user side (profile, pooled behaviour) much wider "
        f"than the candidate side, as in the paper's setting; first-layer FLOPs ratio (D_U+D_I+D_X)/(D_I+D_X) = "
        f"{first_layer:.1f}x at the defaults, {widest:.1f}x at D_U = {max(plan.widths)} (paper: up to 10.95x) |",
        f"| D_I | {b.item_width} | same | a modest item embedding block |",
        f"| D_X | {b.cross_width} | same | a few cross features (user x item statistics) |",
        f"| hidden | {b.hidden} | same | middle of the usual 256..1024 of ranking MLPs; the paper sweeps 64..2048 |",
        f"| user tower | {b.user_width}->{b.user_tower}->{b.user_width} | - | user-only work exists, so VanI and UOI "
        "differ, without swamping the first layer MaRI rewrites |",
        f"| N | {plan.n} | {', '.join(map(str, plan.ns))} | docs/ARCHITECTURE.md section 1 (100..5,000); "
        "above the paper's N >= 500 |",
        f"| chunk | - | {', '.join(map(str, plan.chunks))} | chunk 1 is left out: the engine's build time grows with "
        "the number of concat parts (about 1,200 parts, ~90 s to build, against ~3 s at chunk 50) |",
        "",
    ]
