"""The paper study's figures: speedup and FLOPs ratio per sweep, and the layout-fragmentation plot, with the
paper's published values marked (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.paper_measure import FRAGMENTED, SWEEPS, FragmentPoint, StudyResult, SweepPoint
from bench.paper_published import PAPER


def _paper_speedup_marks(axis: str, xs: Sequence[int]) -> list[tuple[int, float]]:
    if axis == "n":
        return [(x, PAPER.speedup_large_n) for x in xs if x >= PAPER.large_n]
    if axis == "hidden":
        return list(PAPER.speedup_by_hidden)
    return []


def _legend_room(ax: Any) -> None:
    """Grid, and a legend above the data rather than over a marker."""
    from matplotlib.ticker import FormatStrFormatter

    low, high = ax.get_ylim()
    ax.set_ylim(low, high * (3.0 if ax.get_yscale() == "log" else 1.3))
    if ax.get_yscale() == "log":
        ax.yaxis.set_major_formatter(FormatStrFormatter("%gx"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%gx"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", ncols=2)


def plot_sweep(points: list[SweepPoint], axis: str, path: Path, n: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.x for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant, baseline, style in (("uoi", "vani", "s-"), ("mari", "vani", "o-"), ("mari", "uoi", "^-")):
        label = f"{variant.upper() if variant == 'uoi' else 'MaRI'} vs {'VanI' if baseline == 'vani' else 'UOI'}"
        left.plot(xs, [p.speedup(variant, baseline) for p in points], style, label=label)
        right.plot(xs, [p.flops_ratio(variant, baseline) for p in points], style, label=label)
    marks = _paper_speedup_marks(axis, xs)
    if marks:
        left.plot(*zip(*marks), "r*", markersize=13, label="paper (MaRI)")
    left.axhline(PAPER.max_speedup, color="r", ls=":", lw=1, label=f"paper max {PAPER.max_speedup}x")
    right.axhline(PAPER.max_flops_ratio, color="r", ls=":", lw=1, label=f"paper max {PAPER.max_flops_ratio}x")
    left.axhline(1.0, color="grey", lw=0.8)
    left.set_ylabel("measured speedup (median latency ratio)")
    right.set_ylabel("FLOPs ratio (fewer FLOPs = higher)")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xscale("log", base=10 if axis == "n" else 2)
        ax.set_xlabel(SWEEPS[axis])
        _legend_room(ax)
    fixed = "" if axis == "n" else f", N = {n}"
    fig.suptitle(f"Sensitivity to {SWEEPS[axis]}{fixed} ({torch.get_num_threads()} CPU threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fragmentation(points: list[FragmentPoint], path: Path, n: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.chunk for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    lines = (("vani", "VanI", "s-"), ("mari", "MaRI (reorganized)", "o-"), (FRAGMENTED, "MaRI fragmented", "x-"))
    for variant, label, style in lines:
        left.plot(xs, [p.latency_ratio(variant, "uoi") for p in points], style, label=label)
    paper_label = f"paper: chunk {PAPER.chunk}, fragmented"
    left.plot([PAPER.chunk], [PAPER.chunk_vs_original], "r*", markersize=13, label=paper_label)
    left.axhline(PAPER.fragmented_vs_uoi, color="r", ls=":", lw=1, label="paper: fragmented layout +38.8%")
    left.set_ylabel("latency / UOI latency (original matmul)")
    fragmented = [p.latency_ratio(FRAGMENTED, "mari") for p in points]
    right.plot(xs, fragmented, "x-", label="MaRI fragmented / MaRI reorganized")
    right.plot([PAPER.chunk], [PAPER.chunk_vs_neat_mari], "r*", markersize=13, label=f"paper: chunk {PAPER.chunk}")
    right.set_ylabel("latency ratio")
    for p in points:
        right.annotate(f"{p.gemms[FRAGMENTED]} GEMMs", (p.chunk, p.latency_ratio(FRAGMENTED, "mari")), fontsize=7,
                       textcoords="offset points", xytext=(4, 4))
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("chunk size (columns per interleaved user/candidate block)")
        ax.axhline(1.0, color="grey", lw=0.8)
        _legend_room(ax)
    fig.suptitle(f"Layout fragmentation, N = {n} ({torch.get_num_threads()} CPU threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(result: StudyResult, figures: Path) -> list[Path]:
    figures.mkdir(parents=True, exist_ok=True)
    n = result.plan.n
    paths = [plot_sweep(points, axis, figures / f"paper_{axis}.png", n) for axis, points in result.sweeps.items()]
    paths.append(plot_fragmentation(result.fragmentation, figures / "paper_fragmentation.png", result.plan.n))
    return paths
