"""The MaRI paper's offline sensitivity study, on this machine: VanI, UOI and MaRI against N, the user,
item, cross and hidden widths, and layout fragmentation (MaRI with and without layout reorganization).

    python -m bench.paper_study [--quick] [--out docs]

Writes <out>/figures/paper_*.png (speedup and FLOPs ratio per sweep, the paper's values marked) and
<out>/paper_study.md (tables, the command, and where this machine differs from the paper, and why).
Variants come only from the engine; every time is service.benchmark's interleaved method (same weights and
inputs, variants interleaved, warm-up, median). Measuring: bench/paper_measure.py; figures:
bench/paper_plots.py; the report: bench/paper_report.py.
"""

from __future__ import annotations

import argparse
import platform
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.paper_measure import SWEEPS, StudyPlan, build_fragmented, build_variants, count_gemms, run_study
from bench.paper_plots import write_figures
from bench.paper_report import write_markdown
from bench.study_models import StudyConfig

__all__ = [  # the entry point, its plans, and what tests/bench reach through this module
    "FULL_PLAN",
    "QUICK_PLAN",
    "SWEEPS",
    "StudyPlan",
    "build_fragmented",
    "build_variants",
    "count_gemms",
    "main",
]

FULL_PLAN = StudyPlan(
    StudyConfig(),
    1000,
    (10, 50, 100, 500, 1000, 2000, 5000),
    (64, 128, 256, 512, 1024, 2048),
    (5, 10, 25, 50, 100, 250),
    20,
    3,
)
# Quick: widths that overlap the defaults (each width sweep builds one new model; engine builds dominate).
QUICK_PLAN = StudyPlan(
    StudyConfig(user_width=1024, item_width=64, cross_width=64, hidden=64, user_tower=32),
    200, (10, 100, 1000), (64, 1024), (50, 200), 5, 1, quick=True,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paper_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few points and repeats (< 60 s, noisy)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="writes <out>/paper_study.md and <out>/figures/")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice, all cores)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # torch's pytree, on deepcopy
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    result = run_study(plan, log=lambda line: print(line, file=sys.stderr, flush=True))
    figures = write_figures(result, args.out / "figures")
    command = "python -m bench.paper_study" + (" --quick" if args.quick else "") + f" --out {args.out}"
    command += f" --threads {args.threads}" if args.threads else ""
    report = write_markdown(result, args.out / "paper_study.md", figures, command, machine())
    print(f"wrote {report} and {len(figures)} figures in {result.seconds:.0f} s")
    return 0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads, python = torch.get_num_threads(), platform.python_version()
    return f"{cpu}, {threads} torch threads, torch {torch.__version__}, Python {python}"


if __name__ == "__main__":
    raise SystemExit(main())
