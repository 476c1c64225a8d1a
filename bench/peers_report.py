"""bench.peers' report: <out>/peers.json, <out>/peers.md (the page is this command's own) and <out>/peers_*.png.

Everything is computed from the JSON-ready result, so `python -m bench.peers --report-from docs/peers.json`
writes the page and plots again without measuring. "vs best peer": this service's figure over the best of
plain and kserve (capacity: the higher; CPU per candidate: the lower, so below 1 is better there).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

PEERS = ("plain", "kserve")
LABELS = {"plain": "plain FastAPI app", "kserve": "KServe", "vani": "ours, VanI", "mari": "ours, default (auto)",
          "mari_best": "ours, MaRI best"}
COLOURS = {"plain": "tab:grey", "kserve": "tab:brown", "vani": "tab:blue", "mari": "tab:green",
           "mari_best": "tab:olive"}


def _summary(model: dict[str, Any], server: str, mix: str) -> dict[str, Any] | None:
    return next((c["summary"] for c in model["curves"] if (c["variant"], c["mix"]) == (server, mix)), None)


def _servers(model: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(c["variant"] for c in model["curves"]))


def comparison(model: dict[str, Any], mix: str) -> list[dict[str, Any]]:
    """One row per server of one model and mix: capacity, the common step, and ratios to the best peer."""
    rows = []
    for server in _servers(model):
        summary, common = _summary(model, server, mix), model["common"].get(server, {}).get(mix)
        rows.append({"server": server, "capacity_rps": summary["capacity_rps"] if summary else None,
                     "bounded": summary["bounded"] if summary else True,
                     "capacity_candidates_per_s": summary["capacity_candidates_per_s"] if summary else None,
                     "p50_ms": common["p50_ms"] if common else None, "p99_ms": common["p99_ms"] if common else None,
                     "common_failures": common["failures"] if common else None,
                     "cpu_per_1k": common["cpu_s_per_1k_candidates"] if common else None})
    peers = [row for row in rows if row["server"] in PEERS]
    best_capacity = max((r["capacity_rps"] or 0.0 for r in peers), default=0.0)
    cpus = [r["cpu_per_1k"] for r in peers if r["cpu_per_1k"]]
    for row in rows:
        mine = row["server"] not in PEERS
        row["capacity_vs_best_peer"] = (row["capacity_rps"] / best_capacity
                                        if mine and best_capacity and row["capacity_rps"] is not None else None)
        row["cpu_vs_best_peer"] = row["cpu_per_1k"] / min(cpus) if mine and cpus and row["cpu_per_1k"] else None
    return rows


def _cell(value: Any, fmt: str = "{:g}") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def markdown(result: dict[str, Any], plots: list[Path], out: Path) -> str:
    ctx = result["context"]
    loads = ctx["machine_load"]
    lines = ["# This service against what a team would deploy instead (`python -m bench.peers`)", "",
             "Reproduce: `make peers` once (KServe in its own venv, .venv-peers), then `python -m bench.peers --out "
             "docs` (about 30 minutes on a 2-core box); `python -m bench.peers --report-from docs/peers.json` writes "
             "this page and its plots again. The code: bench/peers*.py; the method: bench/peers.py's docstring.", ""]
    if ctx["quick"]:
        lines += ["> **Quick smoke run** (`--quick`: 2 steps of 2 s per sweep, 1 s calibration and ceiling). It shows "
                  "the command works end to end, every server included; its numbers are not measurements and are "
                  "to be replaced by a full run's.", ""]
    shipped = ", ".join(f"{name} {str(value).lower()}" for name, value in ctx.get("ours_defaults", {}).items())
    pinning = (f"each server pinned to CPU {ctx['server_cpu']} (children included), the load generator to CPUs "
               f"{ctx['generator_cpus']}" if ctx["server_cpu"] is not None else "nothing pinned")
    lines += [f"Run {ctx['started_utc']} ({ctx['minutes']} min) on {ctx['machine']}: nproc {ctx['nproc']}, load "
              f"average {loads[0]['loadavg']} before, {loads[-1]['loadavg']} after; torch {ctx['torch']}. Busiest "
              f"processes at the start: {'; '.join(loads[0]['top'])}.", "", f"    {ctx['command']}", "",
              f"Servers, one worker and {ctx['torch_threads']} torch thread each, {pinning}: **plain** "
              "(bench/peers_plain_app.py: FastAPI + uvicorn, pydantic body, torch.tensor, user features tiled, the "
              "eager module under no_grad), **kserve** (bench/peers_kserve.py: KServe's ModelServer, a kserve.Model "
              "taking an Open Inference Protocol JSON request, one tensor per feature), both running the user's "
              "eager model with the artifact's weights (bench/peers_models.py); and this service's `ranker serve`: "
              f"**vani** (RANKER_VARIANT=vani), **mari** (as shipped: RANKER_VARIANT=auto, {shipped}), **mari_best** "
              f"({', '.join(ctx['best_env'])})"
              f"{'; every one of ours with ' + ', '.join(ctx['server_env']) if ctx['server_env'] else ''}. Run here: "
              f"{', '.join(ctx['servers'])}.", "",
              f"Open loop (bench.capacity): constant arrival rate, {ctx['step_s']:g} s steps (up to "
              f"{ctx['max_step_s']:g} s for {ctx['min_requests']} arrivals), at most {ctx['max_steps']} steps per "
              f"sweep; capacity = the highest offered rate with p99 under the SLO "
              f"({', '.join(f'{m}: {ms:g} ms' for m, ms in ctx['slo_ms'].items())}) and zero failures (`>=`: no "
              f"failing rate above it was found). Common rate: {ctx['common_share']:g} x the weakest peer's capacity, "
              "the same arrivals on every server; CPU = the server's process tree's user + system time over that "
              "step (/proc/<pid>/stat) per 1,000 candidates scored. Every body is columnar JSON (V2 JSON for "
              "kserve, built once per body).", ""]
    for name, model in result["models"].items():
        lines += [f"## Model `{name}`", "", f"`{model['path']}`: {model.get('about', '')}; tasks "
                  f"{', '.join(model['tasks'])}; start-up to "
                  f"ready: {', '.join(f'{s} {t:g} s' for s, t in model['ready_s'].items())}.", ""]
        for mix, pool in model["mixes"].items():
            lines.append(f"- mix `{mix}`: {pool['bodies']} bodies, N {pool['n_min']}-{pool['n_max']} (median "
                         f"{pool['n_median']}, mean {pool['n_mean']}).")
        ceiling = model.get("ceiling")
        if ceiling:
            mari = _summary(model, "mari", ceiling["mix"])
            ratio = f"{mari['capacity_rps'] / ceiling['requests_per_s']:.2f}" if mari else "-"
            lines += ["", f"Model-only ceiling: {ceiling['requests_per_s']:g} req/s ({ceiling['candidates_per_s']:,} "
                      f"candidates/s), this service's MaRI variant (runs as {ceiling['runs_as']}) called back to back "
                      f"in-process on the `{ceiling['mix']}` mix's encoded requests, 1 torch thread, "
                      f"{ceiling['seconds']:g} s. Ours-default (mari) capacity / ceiling: **{ratio}**."]
        for mix in model["mixes"]:
            rate = model["common_rates"].get(mix)
            rows = comparison(model, mix)
            lines += ["", f"### `{name}`, mix `{mix}` (SLO p99 <= {ctx['slo_ms'][mix]:g} ms; common rate "
                      f"{_cell(rate)} req/s)", "", *_table(
                          ["server", "capacity (req/s)", "candidates/s", "capacity vs best peer", "p50 (ms)",
                           "p99 (ms)", "failures", "CPU s / 1k candidates", "CPU vs best peer"],
                          [[LABELS.get(r["server"], r["server"]),
                            ("" if r["bounded"] else ">= ") + _cell(r["capacity_rps"]),
                            _cell(r["capacity_candidates_per_s"], "{:,.0f}"),
                            _cell(r["capacity_vs_best_peer"], "**{:.2f}x**"), _cell(r["p50_ms"]), _cell(r["p99_ms"]),
                            _cell(r["common_failures"]), _cell(r["cpu_per_1k"], "{:.4f}"),
                            _cell(r["cpu_vs_best_peer"], "{:.2f}x")] for r in rows])]
        lines += ["", "Every step (offered req/s: p99 ms; `x` fails the SLO):", ""]
        for curve in model["curves"]:
            steps = ", ".join(f"{s['offered_rps']:g}: {s['p99_ms']:g}{'' if s['meets_slo'] else ' x'}"
                              f"{' (' + str(s['failures']) + ' failed)' if s['failures'] else ''}"
                              for s in sorted(curve["steps"], key=lambda s: s["offered_rps"]))
            lines.append(f"- {curve['variant']}, {curve['mix']} (single-slot estimate {curve['single_slot_rps']:g} "
                         f"req/s): {steps}")
        lines.append("")
    lines += [f"![{path.stem}]({os.path.relpath(path, out)})" for path in plots]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], out: Path, prefix: str) -> list[Path]:
    """Capacity bars per model and mix; p50/p99 at the common rate per model and mix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, mix) for name, model in result["models"].items() for mix in model["mixes"]]
    paths = []
    for kind in ("capacity", "latency"):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
        for ax, (name, mix) in zip(axes[0], panels, strict=True):
            model = result["models"][name]
            rows = comparison(model, mix)
            labels = [r["server"] for r in rows]
            if kind == "capacity":
                ax.bar(labels, [r["capacity_rps"] or 0.0 for r in rows], color=[COLOURS.get(s) for s in labels])
                ax.set(ylabel="requests/s at the SLO", title=f"{name}, {mix}: capacity")
            else:
                x = range(len(rows))
                ax.bar([i - 0.2 for i in x], [r["p50_ms"] or 0.0 for r in rows], width=0.4, label="p50")
                ax.bar([i + 0.2 for i in x], [r["p99_ms"] or 0.0 for r in rows], width=0.4, label="p99")
                ax.set_xticks(list(x), labels)
                ax.set(ylabel="ms", title=f"{name}, {mix}: at {model['common_rates'].get(mix, 0):g} req/s")
                ax.legend(fontsize=7)
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
            ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / f"{prefix}_{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(result: dict[str, Any], out: Path, prefix: str) -> list[Path]:
    plots = plot(result, out, prefix)
    page, data = out / f"{prefix}.md", out / f"{prefix}.json"
    page.write_text(markdown(result, plots, out))
    data.write_text(json.dumps(result, indent=2, default=str))
    return [data, page, *plots]
