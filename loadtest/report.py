"""Results of the load runs: locust CSVs + /metrics deltas -> PointResult -> markdown and PNG reports."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from service.serving.metrics import STAGES

VARIANT_COLOURS = {"vani": "tab:red", "uoi": "tab:orange", "mari": "tab:green"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class PointResult:
    """One locust run against one variant: client-side numbers from locust, server-side from /metrics."""

    variant: str
    users: int
    exit_code: int
    requests: int
    failures: int
    fail_ratio: float
    requests_per_s: float
    candidates_per_s: float  # candidates of successful requests per second of the run
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_n: float  # candidates per successful request
    shapes: dict[str, dict[str, float]] = field(default_factory=dict)  # "rows"/"columnar" -> requests, p50, p99
    server_stage_ms: dict[str, float] = field(default_factory=dict)  # mean per request
    server_request_ms: float = 0.0
    server_statuses: dict[str, int] = field(default_factory=dict)
    server_candidates: int = 0
    pool: dict[str, Any] = field(default_factory=dict)
    failed_because: list[str] = field(default_factory=list)
    csv_prefix: str = ""


def parse_metrics(text: str) -> Samples:
    """Prometheus text -> {(sample name, labels): value}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """Sum over samples of `name` whose labels include `labels`, after minus before."""
    wanted = set(labels.items())

    def total(samples: Samples) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))

    return total(after) - total(before)


def _number(text: str) -> float:
    return float(text) if text not in ("", "N/A") else 0.0


def read_stats_csv(path: Path) -> dict[str, dict[str, str]]:
    """locust's <prefix>_stats.csv by request name ('Aggregated' for the total)."""
    with open(path, newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


def point_result(variant: str, users: int, exit_code: int, prefix: Path, before: Samples,
                 after: Samples) -> PointResult:
    rows = read_stats_csv(Path(f"{prefix}_stats.csv"))
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    total = rows["Aggregated"]
    requests = int(_number(total["Request Count"]))
    ok_requests = sum(summary["ok_requests"].values())
    ok_candidates = sum(summary["ok_candidates"].values())
    requests_per_s = _number(total["Requests/s"])
    shapes = {
        shape: {"requests": int(_number(row["Request Count"])), "failures": int(_number(row["Failure Count"])),
                "p50_ms": _number(row["50%"]), "p99_ms": _number(row["99%"])}
        for shape in ("rows", "columnar") if (row := rows.get(f"/rank {shape}"))
    }
    server_count = _delta(before, after, "ranker_request_duration_seconds_count", variant=variant)
    stage_ms = {
        stage: 1e3 * _delta(before, after, "ranker_stage_duration_seconds_sum", stage=stage, variant=variant)
        / server_count if server_count else 0.0
        for stage in STAGES
    }
    statuses: dict[str, int] = {}
    for (name, labels), _ in after.items():
        if name == "ranker_requests_total":
            status = dict(labels)["status"]
            statuses[status] = statuses.get(status, 0) + int(_delta(before, after, name, **dict(labels)))
    return PointResult(
        variant=variant, users=users, exit_code=exit_code, requests=requests,
        failures=int(_number(total["Failure Count"])), fail_ratio=summary["fail_ratio"],
        requests_per_s=requests_per_s,
        candidates_per_s=requests_per_s * ok_candidates / requests if requests else 0.0,
        p50_ms=_number(total["50%"]), p95_ms=_number(total["95%"]), p99_ms=_number(total["99%"]),
        max_ms=_number(total["Max Response Time"]), mean_n=ok_candidates / ok_requests if ok_requests else 0.0,
        shapes=shapes, server_stage_ms=stage_ms,
        server_request_ms=1e3 * _delta(before, after, "ranker_request_duration_seconds_sum", variant=variant)
        / server_count if server_count else 0.0,
        server_statuses={s: c for s, c in sorted(statuses.items()) if c},
        server_candidates=int(_delta(before, after, "ranker_candidates_scored_total", variant=variant)),
        pool=summary["pool"], failed_because=summary["failed_because"], csv_prefix=str(prefix),
    )


# --- markdown -------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _setup_lines(points: list[PointResult], args: Any, context: dict[str, Any]) -> list[str]:
    pool = points[0].pool if points else {}
    load = "closed loop (no think time)" if not args.think_ms else f"mean think time {args.think_ms:g} ms"
    return [
        f"Generated by `loadtest/run.py` at {context['started_utc']} (UTC) on {context['machine']}.",
        "Absolute numbers are noisy on a shared machine; compare variants within one run.",
        "",
        "```",
        context["command"],
        "```",
        "",
        f"- model: `{context['model']}`; server: `ranker serve` on 127.0.0.1, {args.workers} worker(s), "
        f"locust on the same machine; settings: "
        + ", ".join(f"`{k}={v}`" for k, v in context["server_settings"].items()) + " (others: defaults)",
        f"- load: {load}, spawn rate {args.spawn_rate:g}/s, {args.duration} s per run, same for every variant",
        f"- traffic: {pool.get('bodies')} pre-generated bodies for a population of {pool.get('users')} users; "
        f"N ~ log-normal(median {args.n_median:g}, sigma {args.n_sigma:g}) clipped to [{args.n_min}, {args.n_max}]"
        f" (pool: min {pool.get('n_min')}, median {pool.get('n_median')}, mean {pool.get('n_mean')}, "
        f"p95 {pool.get('n_p95')}, max {pool.get('n_max')}); {pool.get('columnar')} columnar, rest row-wise; "
        f"mean body {pool.get('mean_body_kib')} KiB; seed {args.seed}",
        f"- CSVs and logs: `{_relative(context['results_dir'])}`",
    ]


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def _targets(points: list[PointResult]) -> list[str]:
    """The issue's acceptance checks, computed from this run (reported, never assumed)."""
    by_variant = {p.variant: p for p in points}
    vani, mari = by_variant.get("vani"), by_variant.get("mari")
    if vani is None or mari is None:
        return []
    ratio = mari.candidates_per_s / vani.candidates_per_s if vani.candidates_per_s else float("inf")
    return [
        "## Targets (computed from this run)",
        "",
        f"- MaRI candidates/s / VanI candidates/s = {ratio:.2f} (target >= 2): {'met' if ratio >= 2 else 'NOT met'}",
        f"- MaRI failures: {mari.failures} (target 0): {'met' if mari.failures == 0 else 'NOT met'}",
        f"- MaRI p99 {mari.p99_ms:g} ms vs VanI p50 {vani.p50_ms:g} ms (target: below): "
        f"{'met' if mari.p99_ms < vani.p50_ms else 'NOT met'}",
        "",
    ]


def write_report(points: list[PointResult], args: Any, context: dict[str, Any], out: Path) -> list[Path]:
    """<out>/loadtest.md and <out>/figures/loadtest_summary.png for one run per variant."""
    figure = out / "figures" / "loadtest_summary.png"
    plot_summary(points, figure)
    main_rows = [[p.variant, p.requests, p.failures, f"{p.fail_ratio:.3f}", f"{p.requests_per_s:.2f}",
                  f"{p.candidates_per_s:,.0f}", f"{p.p50_ms:g}", f"{p.p95_ms:g}", f"{p.p99_ms:g}",
                  f"{p.mean_n:.0f}", p.exit_code] for p in points]
    stage_rows = [[p.variant] + [f"{p.server_stage_ms[s]:.2f}" for s in STAGES]
                  + [f"{p.server_request_ms:.2f}", p.server_candidates, _statuses(p)] for p in points]
    shape_rows = [[p.variant] + [f"{p.shapes.get(s, {}).get(k, 0):g}" for s in ("rows", "columnar")
                                 for k in ("requests", "p50_ms", "p99_ms")] for p in points]
    lines = [f"# Load test: {', '.join(p.variant for p in points)}", "", *_setup_lines(points, args, context), "",
             f"Users {args.users}; a run fails on any failed request or p99 above {args.p99_bound_ms:g} ms "
             "(locust exit code).", "",
             *_table(["variant", "requests", "failures", "fail ratio", "req/s", "candidates/s", "p50 ms",
                      "p95 ms", "p99 ms", "mean N", "locust exit"], main_rows), "",
             *_targets(points),
             "## Server-side stage times", "",
             "Mean per request in ms, from `ranker_stage_duration_seconds` sums/counts scraped from /metrics "
             "before and after the run (queue: waiting for an inference slot).", "",
             *_table(["variant", *STAGES, "server total", "candidates scored", "HTTP statuses"], stage_rows), "",
             "## By request shape (client side)", "",
             *_table(["variant", "rows requests", "rows p50 ms", "rows p99 ms", "columnar requests",
                      "columnar p50 ms", "columnar p99 ms"], shape_rows), "",
             f"![load test summary](figures/{figure.name})", ""]
    path = out / "loadtest.md"
    path.write_text("\n".join(lines))
    return [path, figure]


def write_sweep_report(points: list[PointResult], args: Any, context: dict[str, Any], out: Path) -> list[Path]:
    """<out>/loadtest_sweep.md and <out>/figures/loadtest_sweep.png: throughput against latency per variant."""
    figure = out / "figures" / "loadtest_sweep.png"
    plot_sweep(points, figure)
    rows = [[p.variant, p.users, f"{p.requests_per_s:.2f}", f"{p.candidates_per_s:,.0f}", f"{p.p50_ms:g}",
             f"{p.p95_ms:g}", f"{p.p99_ms:g}", f"{p.fail_ratio:.3f}", f"{p.server_stage_ms['queue']:.1f}",
             f"{p.server_stage_ms['infer']:.1f}"] for p in points]
    peaks = []
    for variant in dict.fromkeys(p.variant for p in points):
        best = max((p for p in points if p.variant == variant), key=lambda p: p.candidates_per_s)
        users = f"{best.users} user" + ("s" if best.users != 1 else "")
        peaks.append(f"- {variant}: peak {best.candidates_per_s:,.0f} candidates/s at {users} "
                     f"(p50 {best.p50_ms:g} ms, p99 {best.p99_ms:g} ms, fail ratio {best.fail_ratio:.3f})")
    lines = ["# Load sweep: throughput against latency", "", *_setup_lines(points, args, context), "",
             f"Users swept: {', '.join(map(str, args.users_list))} (one server per variant, one locust run per "
             "point; no p99 bound: past saturation requests queue, then get 503).", "",
             *_table(["variant", "users", "req/s", "candidates/s", "p50 ms", "p95 ms", "p99 ms", "fail ratio",
                      "server queue ms", "server infer ms"], rows), "", *peaks, "",
             f"![throughput against latency](figures/{figure.name})", ""]
    path = out / "loadtest_sweep.md"
    path.write_text("\n".join(lines))
    return [path, figure]


def _statuses(point: PointResult) -> str:
    return ", ".join(f"{status}: {count}" for status, count in point.server_statuses.items()) or "-"


# --- figures --------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_summary(points: list[PointResult], path: Path) -> None:
    """Three panels: candidates/s, client latency percentiles, server stage times, one bar group per variant."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [p.variant for p in points]
    colours = [VARIANT_COLOURS.get(n, "tab:blue") for n in names]
    fig, (ax_tp, ax_lat, ax_stage) = plt.subplots(1, 3, figsize=(15, 4.5))
    ax_tp.bar(names, [p.candidates_per_s for p in points], color=colours)
    for i, p in enumerate(points):
        ax_tp.annotate(f"{p.requests_per_s:.1f} req/s", (i, p.candidates_per_s), ha="center", va="bottom",
                       fontsize=8)
    ax_tp.set(title="Throughput", ylabel="candidates scored / s")
    width = 0.27
    for j, (label, key) in enumerate((("p50", "p50_ms"), ("p95", "p95_ms"), ("p99", "p99_ms"))):
        ax_lat.bar([i + (j - 1) * width for i in range(len(points))], [getattr(p, key) for p in points], width,
                   label=label)
    ax_lat.set_xticks(range(len(points)), names)
    ax_lat.set(title="Client latency", ylabel="ms")
    ax_lat.legend()
    bottom = [0.0] * len(points)
    for stage in STAGES:
        heights = [p.server_stage_ms[stage] for p in points]
        ax_stage.bar(names, heights, bottom=bottom, label=stage)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax_stage.set(title="Server time per request (mean, /metrics)", ylabel="ms")
    ax_stage.legend(fontsize=8)
    users = points[0].users if points else 0
    fig.suptitle(f"POST /rank under the same load ({users} users), per variant")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(points: list[PointResult], path: Path) -> None:
    """Latency (p50 dashed, p99 solid) against candidates/s, one line per variant, points labelled by users."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 5))
    for variant in dict.fromkeys(p.variant for p in points):
        series = sorted((p for p in points if p.variant == variant), key=lambda p: p.users)
        colour = VARIANT_COLOURS.get(variant, "tab:blue")
        x = [p.candidates_per_s for p in series]
        ax.plot(x, [p.p99_ms for p in series], "o-", color=colour, label=f"{variant} p99")
        ax.plot(x, [p.p50_ms for p in series], "s--", color=colour, alpha=0.6, label=f"{variant} p50")
        for p in series:
            ax.annotate(f"{p.users}u", (p.candidates_per_s, p.p99_ms), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    ax.set(xlabel="throughput (candidates scored / s)", ylabel="client latency (ms)", yscale="log",
           title="Throughput against latency as users grow (labels: users)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
