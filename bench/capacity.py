"""Capacity at a latency SLO: open-loop load (a constant arrival rate) against a real `ranker serve`.

    python -m bench.capacity --model model_store/default --variants vani,uoi,mari --batching off,on \
        --mixes mix,small --out docs          # -> docs/capacity.json, docs/capacity.md, docs/capacity_<mix>.png

For each variant x batching, one server (loadtest.run.Server: RANKER_VARIANT, RANKER_BATCHING, one torch
thread) serves every mix in turn. Per mix, a sweep of offered rates finds the highest rate whose p99 stays
under the mix's SLO with zero failures (a 503, a timeout, a wrong answer). Requests are sent on a schedule
fixed in advance (request i at start + i / rate), each on its own task and connection, so a slow server
cannot slow the arrivals; latency is measured from the scheduled send time.

The sweep: a sequential calibration gives a single-slot estimate c = 1 / mean latency; a low-load step at
LOW_LOAD x c (its p99 is "p99 at low load"); a geometric ladder from LADDER_START x c up by LADDER_FACTOR
until a rate fails; then bisection between the last pass and the first failure, --max-steps steps in all. A
failing rate is tried a second time before it counts as failed (the box is shared; both attempts are reported).
The outside-inference share, (total - infer) / total from Server-Timing, is measured per variant with
sequential requests of --outside-n candidates on the batching-off server.

Mixes: "mix" is the load test's (loadtest.traffic: N log-normal, median 300, in [100, 3000]); "small" has N
uniform in [50, 200]. Both are built once, seeded, half columnar. The markdown is written between markers
in <out>/capacity.md, so the rest of that page (compile speedups) stays. --quick: a 2-step sweep, 2 s steps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtest.run import REPO_ROOT, RunError, Server, compile_modes
from loadtest.traffic import Body, TrafficMix, build_pool, describe_pool

LOW_LOAD = 0.2  # of the single-slot estimate: the low-load step
LADDER_START = 0.6
LADDER_FACTOR = 1.3
BISECT_UNTIL = 1.05  # stop bisecting when first failure / last pass is below this
CALIBRATION_S = 2.0
CALIBRATION_MAX_REQUESTS = 40
REQUEST_TIMEOUT_S = 10.0
DRAIN_S = 5.0  # after the last arrival, in-flight requests get this long before they count as failures
PAUSE_S = 1.0  # between steps: the server's queue empties
MAX_CONNECTIONS = 1024
LATE_SENDER_MS = 20.0  # a step whose sends lag more (p99) had a generator short of CPU: flagged in the report
SMALL_N = (50, 200)
# mix: 500 ms, since VanI alone takes ~330 ms at N = 2,000 (the mix's p99 requests) on the 2-core box: 150 ms
# would give VanI no capacity at all; small: N <= 200 takes VanI ~30 ms alone
DEFAULT_SLO_MS = {"mix": 500.0, "small": 100.0}
MARK_BEGIN, MARK_END = "<!-- capacity:begin (bench/capacity.py) -->", "<!-- capacity:end -->"
N_CANDIDATES = re.compile(rb'"n_candidates"\s*:\s*(\d+)')
TIMING = re.compile(r"(\w+);dur=([0-9.]+)")
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class Sample:
    """One request: latency from its scheduled send time, how late it was sent, and what came back."""

    ok: bool
    latency_s: float
    lag_s: float
    n: int
    error: str = ""
    server_ms: dict[str, float] = field(default_factory=dict)  # Server-Timing, milliseconds per stage


@dataclass
class Step:
    """One offered rate held for a while: what was offered, what came back, and whether it met the SLO."""

    offered_rps: float
    duration_s: float
    requests: int
    failures: int
    achieved_rps: float  # successful responses per second of the step
    candidates_per_s: float  # candidates of successful responses per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    send_lag_p99_ms: float  # how late the generator sent (it must stay small for the step to be open loop)
    errors: dict[str, int]
    meets_slo: bool


@dataclass
class Curve:
    variant: str
    batching: bool
    mix: str
    slo_ms: float
    single_slot_rps: float  # calibration: 1 / mean sequential latency
    steps: list[Step] = field(default_factory=list)

    @property
    def best(self) -> Step | None:
        """The passing step at the highest offered rate."""
        passing = [s for s in self.steps if s.meets_slo]
        return max(passing, key=lambda s: s.offered_rps) if passing else None

    @property
    def bounded(self) -> bool:
        """True when a rate above the best passing one failed every attempt (the capacity is not a lower bound)."""
        best = self.best
        failed = [rate for rate, ok in rate_outcomes(self).items() if not ok]
        return any(best is None or rate > best.offered_rps for rate in failed)

    def summary(self) -> dict[str, Any]:
        best, low = self.best, self.steps[0] if self.steps else None
        return {"variant": self.variant, "batching": self.batching, "mix": self.mix, "slo_ms": self.slo_ms,
                "capacity_rps": best.offered_rps if best else 0.0,
                "capacity_candidates_per_s": best.candidates_per_s if best else 0.0,
                "bounded": self.bounded, "low_load_rps": low.offered_rps if low else 0.0,
                "low_load_p99_ms": low.p99_ms if low else math.nan}


# --- traffic -------------------------------------------------------------------------------------------------

def build_mixes(model: Path, names: list[str], seed: int, bodies: int) -> dict[str, list[Body]]:
    """The body pools: "mix" from loadtest.traffic, "small" with N uniform in SMALL_N."""
    pools = {}
    for name in names:
        if name == "mix":
            pools[name] = build_pool(model, TrafficMix(bodies=bodies, seed=seed))
        else:
            pools[name] = build_uniform_pool(model, *SMALL_N, bodies=bodies, seed=seed)
    return pools


def build_uniform_pool(model: Path, n_min: int, n_max: int, bodies: int, seed: int) -> list[Body]:
    """Like loadtest.traffic.build_pool, with N uniform in [n_min, n_max]."""
    from service.serving.example_request import example_request_for_store

    rng = random.Random(seed)
    pool = []
    for i in range(bodies):
        n, columnar = rng.randint(n_min, n_max), rng.random() < 0.5
        request = example_request_for_store(model, n=n, columnar=columnar, seed=seed * 100_003 + i)
        request["user_id"], request["request_id"] = f"cap-user-{i}", f"cap-{i}"
        payload = json.dumps(request, separators=(",", ":")).encode()
        pool.append(Body(request["user_id"], n, "columnar" if columnar else "rows", payload))
    return pool


# --- what is sent where --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A server's door: the URL path, how a pool body becomes that door's request bytes (done once per pool, by
    `encode_pool`, never per send), and whether a 200 answered it right ("" when it did, else why not). This
    service's /rank is one target (`rank_target`); bench.peers points the same open loop at servers that speak
    other formats (a plain FastAPI app, KServe's V2 protocol)."""

    path: str
    check: Callable[[httpx.Response, Body], str]
    encode: Callable[[Body], bytes] | None = None  # None: the pool's /rank JSON as it is


AUTO_FORMS = ("vani", "uoi", "mari")  # what X-Variant says a request under `auto` ran as


def rank_target(variant: str) -> Target:
    """POST /rank of this service: right when it scores every candidate with `variant` (X-Variant), or, for the
    `auto` default, with one of the forms auto picks from."""
    served = AUTO_FORMS if variant == "auto" else (variant,)

    def check(response: httpx.Response, body: Body) -> str:
        found = N_CANDIDATES.search(response.content)
        ok = found is not None and int(found.group(1)) == body.n and response.headers.get("x-variant") in served
        return "" if ok else "wrong answer"

    return Target("/rank", check)


def encode_pool(pool: list[Body], target: Target) -> list[Body]:
    """The pool in the target's request format, built once before any load."""
    encode = target.encode
    return pool if encode is None else [replace(body, payload=encode(body)) for body in pool]


# --- one step of open-loop load ------------------------------------------------------------------------------

async def send(client: httpx.AsyncClient, url: str, body: Body, at: float, target: Target) -> Sample:
    """POST one (already encoded) body scheduled at loop time `at`; ok when a 200 passes the target's check."""
    loop = asyncio.get_running_loop()
    lag = loop.time() - at
    try:
        response = await client.post(f"{url}{target.path}", content=body.payload, headers=JSON_HEADERS)
    except httpx.HTTPError as exc:
        return Sample(False, loop.time() - at, lag, body.n, type(exc).__name__)
    latency = loop.time() - at
    if response.status_code != 200:
        return Sample(False, latency, lag, body.n, f"http {response.status_code}")
    if error := target.check(response, body):
        return Sample(False, latency, lag, body.n, error)
    timing = {k: float(v) for k, v in TIMING.findall(response.headers.get("server-timing", ""))}
    return Sample(True, latency, lag, body.n, server_ms=timing)


async def open_loop(url: str, pool: list[Body], rate: float, duration_s: float, target: Target,
                    seed: int) -> list[Sample]:
    """Send round(rate x duration) requests at start + i / rate, whatever the responses do."""
    rng = random.Random(seed)
    count = max(1, round(rate * duration_s))
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S) as client:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        tasks = []
        for i in range(count):
            at = start + i / rate
            if (delay := at - loop.time()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(client, url, rng.choice(pool), at, target)))
        done, pending = await asyncio.wait(tasks, timeout=DRAIN_S + REQUEST_TIMEOUT_S)
        for task in pending:
            task.cancel()
    late = [Sample(False, math.inf, 0.0, 0, "not answered") for _ in pending]
    return [task.result() for task in done] + late


def summarize(samples: list[Sample], rate: float, duration_s: float, slo_ms: float) -> Step:
    ok = [s for s in samples if s.ok]
    latencies = np.array([s.latency_s for s in samples]) * 1e3
    finite = latencies[np.isfinite(latencies)]
    p50, p90, p99 = (np.percentile(latencies, [50, 90, 99]) if finite.size == latencies.size and latencies.size
                     else (math.inf, math.inf, math.inf))
    errors: dict[str, int] = {}
    for sample in samples:
        if not sample.ok:
            errors[sample.error] = errors.get(sample.error, 0) + 1
    failures = len(samples) - len(ok)
    return Step(rate, duration_s, len(samples), failures, len(ok) / duration_s, sum(s.n for s in ok) / duration_s,
                round(float(p50), 2), round(float(p90), 2), round(float(p99), 2),
                round(float(latencies.max()), 2) if latencies.size else math.inf,
                round(float(np.percentile([s.lag_s for s in samples], 99)) * 1e3, 2), errors,
                failures == 0 and float(p99) <= slo_ms)


# --- the sweep -----------------------------------------------------------------------------------------------

def calibrate(url: str, pool: list[Body], variant: str, seconds: float, target: Target | None = None) -> float:
    """Sequential requests for `seconds`: 1 / mean latency, the rate one slot sustains without batching."""
    target = target or rank_target(variant)
    latencies: list[float] = []
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(latencies) < CALIBRATION_MAX_REQUESTS:
            body = pool[len(latencies) % len(pool)]
            started = time.perf_counter()
            response = client.post(f"{url}{target.path}", content=body.payload, headers=JSON_HEADERS)
            error = f"http {response.status_code}" if response.status_code != 200 else target.check(response, body)
            if error:
                raise RunError(f"{variant}: calibration request failed ({error}): {response.text[:300]}")
            latencies.append(time.perf_counter() - started)
    return 1.0 / float(np.mean(latencies))


def rate_outcomes(curve: Curve) -> dict[float, bool]:
    """Per offered rate: True when an attempt met the SLO, False when every attempt failed."""
    outcomes: dict[float, bool] = {}
    for step in curve.steps:
        outcomes[step.offered_rps] = outcomes.get(step.offered_rps, False) or step.meets_slo
    return outcomes


def next_rate(curve: Curve, estimate: float) -> float | None:
    """Low load, then a ladder up from LADDER_START x estimate until a failure, then bisection; a failing rate is
    tried once more first (a shared box has outliers). None when the capacity is pinned."""
    if not curve.steps:
        return LOW_LOAD * estimate
    last = curve.steps[-1]
    if not last.meets_slo and sum(s.offered_rps == last.offered_rps for s in curve.steps) == 1:
        return last.offered_rps
    outcomes = rate_outcomes(curve)
    low = max((rate for rate, ok in outcomes.items() if ok), default=0.0)
    high = min((rate for rate, ok in outcomes.items() if not ok and rate > low), default=None)
    if high is None:
        return max(LADDER_START * estimate, low * LADDER_FACTOR)
    if low == 0.0:
        return high / 2
    return None if high / low < BISECT_UNTIL else math.sqrt(low * high)


def sweep(url: str, pool: list[Body], curve: Curve, args: argparse.Namespace, target: Target | None = None) -> Curve:
    """Steps of open-loop load at the rates next_rate proposes; `pool` is already in the target's format (default:
    this service's /rank for curve.variant)."""
    target = target or rank_target(curve.variant)
    for index in range(args.max_steps):
        proposed = next_rate(curve, curve.single_slot_rps)
        if proposed is None:
            break
        rate = round(proposed, 2)  # the rate scheduled is the rate reported: its arrivals are round(rate x s)
        duration = min(max(args.step_s, args.min_requests / rate), args.max_step_s)  # enough samples for a p99
        samples = asyncio.run(open_loop(url, pool, rate, duration, target, args.seed + index))
        step = summarize(samples, rate, duration, curve.slo_ms)
        curve.steps.append(step)
        print(f"    {curve.variant:4s} batching={'on ' if curve.batching else 'off'} {curve.mix:5s} "
              f"offered={step.offered_rps:7.2f} achieved={step.achieved_rps:7.2f} p50={step.p50_ms:7.1f} "
              f"p99={step.p99_ms:7.1f} ms failures={step.failures} lag99={step.send_lag_p99_ms:.1f} ms "
              f"{'ok' if step.meets_slo else 'FAIL'}", flush=True)
        time.sleep(PAUSE_S)
    return curve


def outside_inference(url: str, pool: list[Body], requests: int) -> dict[str, Any]:
    """(total - infer) / total from Server-Timing over sequential requests (median and overall)."""
    shares, totals, infers = [], 0.0, 0.0
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        for i in range(requests):
            response = client.post(f"{url}/rank", content=pool[i % len(pool)].payload, headers=JSON_HEADERS)
            timing = {k: float(v) for k, v in TIMING.findall(response.headers.get("server-timing", ""))}
            if response.status_code != 200 or "total" not in timing:
                raise RunError(f"outside-inference request got {response.status_code}: {response.text[:300]}")
            shares.append((timing["total"] - timing["infer"]) / timing["total"])
            totals, infers = totals + timing["total"], infers + timing["infer"]
    return {"requests": requests, "n": pool[0].n, "median_share": round(float(np.median(shares)), 4),
            "overall_share": round((totals - infers) / totals, 4), "mean_total_ms": round(totals / requests, 3),
            "mean_infer_ms": round(infers / requests, 3)}


def machine_load() -> dict[str, Any]:
    """Load averages and the busiest processes now (what else was running)."""
    top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "top": top.splitlines()[1:6]}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    from service.serving.example_request import example_request_for_store

    pools = build_mixes(args.model, args.mixes, args.seed, args.bodies)
    outside_pool = [Body("cap-outside", args.outside_n, shape, json.dumps(
        example_request_for_store(args.model, n=args.outside_n, columnar=shape == "columnar", seed=args.seed)
    ).encode()) for shape in ("columnar", "rows")]
    curves, outside, loads = [], {}, [machine_load()]
    estimates: dict[tuple[str, str], float] = {}  # the first server's, so off and on share their low-load rate
    for variant in args.variants:
        for batching in args.batching:
            server_args = argparse.Namespace(model=args.model, torch_threads=args.torch_threads, workers=1,
                                             compile=args.compile,
                                             ready_timeout_s=args.ready_timeout_s,
                                             server_env=[f"RANKER_BATCHING={str(batching).lower()}", *args.server_env])
            log = args.results_dir / f"server_{variant}_batching_{'on' if batching else 'off'}.log"
            started = time.perf_counter()
            with Server(variant, server_args, log) as server:
                print(f"{variant} batching={batching} ready in {time.perf_counter() - started:.1f}s", flush=True)
                for mix, pool in pools.items():
                    estimate = calibrate(server.url, pool, variant, args.calibration_s)  # also a warm-up
                    estimate = estimates.setdefault((variant, mix), round(estimate, 2))
                    curve = Curve(variant, batching, mix, args.slo_ms[mix], estimate)
                    curves.append(sweep(server.url, pool, curve, args))
                if not batching and args.outside_requests:
                    outside[variant] = outside_inference(server.url, outside_pool, args.outside_requests)
            loads.append(machine_load())
    return {"curves": curves, "outside_inference": outside, "machine_load": loads,
            "mixes": {name: describe_pool(pool) for name, pool in pools.items()}}


# --- report --------------------------------------------------------------------------------------------------

def capacity(curves: list[Curve], variant: str, batching: bool, mix: str) -> Curve | None:
    return next((c for c in curves if (c.variant, c.batching, c.mix) == (variant, batching, mix)), None)


def targets(curves: list[Curve], outside: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's four targets, each with its measured value and whether it is met (None: not measured)."""
    rows: list[dict[str, Any]] = []

    def ratio(a: Curve | None, b: Curve | None) -> float | None:
        if a is None or b is None or a.best is None or b.best is None:
            return None
        return a.best.offered_rps / b.best.offered_rps

    for batching in (False, True):
        value = ratio(capacity(curves, "mari", batching, "mix"), capacity(curves, "vani", batching, "mix"))
        rows.append({"target": f"mix, batching {'on' if batching else 'off'}: MaRI capacity >= 2.5x VanI",
                     "value": value, "met": None if value is None else value >= 2.5})
    value = ratio(capacity(curves, "mari", True, "small"), capacity(curves, "mari", False, "small"))
    rows.append({"target": "small mix: MaRI batching on >= 1.6x off", "value": value,
                 "met": None if value is None else value >= 1.6})
    for off in (c for c in curves if not c.batching and c.steps):
        on = capacity(curves, off.variant, True, off.mix)
        if on is None or not on.steps:
            continue
        value = on.steps[0].p99_ms / off.steps[0].p99_ms
        rows.append({"target": f"{off.variant} {off.mix}: p99 at low load ({off.steps[0].offered_rps:g} req/s), "
                               f"batching on <= 1.1x off", "value": value, "met": value <= 1.1})
    for variant, measured in outside.items():
        value = measured["median_share"]
        rows.append({"target": f"{variant}: outside-inference share at N={measured['n']} <= 20%", "value": value,
                     "met": value <= 0.2})
    return rows


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def markdown(result: dict[str, Any], plots: list[Path], out: Path) -> str:
    curves: list[Curve] = result["curves"]
    ctx = result["context"]
    lines = [MARK_BEGIN, "", f"Measured {ctx['started_utc']} on {ctx['machine']}, with:", "",
             f"    {ctx['command']}", "",
             f"SLO: p99 under {', '.join(f'{ms:g} ms ({mix})' for mix, ms in ctx['slo_ms'].items())}, zero "
             f"failures (503, timeout, wrong answer). Open loop: constant arrival rate, {ctx['step_s']:g} s per step "
             f"(longer, up to {ctx['max_step_s']:g} s, until {ctx['min_requests']} arrivals), latency from the "
             f"scheduled send time. Server: one "
             f"worker, RANKER_TORCH_THREADS="
             f"{ctx['torch_threads']}, settings {ctx['server_env'] or 'default'}. Load average before/after each "
             f"server: {', '.join(str(m['loadavg'][0]) for m in result['machine_load'])}; busiest processes at "
             f"the start: {'; '.join(result['machine_load'][0]['top'])}.", ""]
    for mix, pool in result["mixes"].items():
        lines.append(f"- mix `{mix}`: {pool['bodies']} bodies, N {pool['n_min']}-{pool['n_max']} (median "
                     f"{pool['n_median']}, mean {pool['n_mean']}), {pool['columnar']} columnar.")
    header = ["variant", "batching"] + [f"{mix}: {column}" for mix in result["mixes"]
                                        for column in ("req/s at SLO", "cand/s", "p99 at low load (ms)")]
    rows = []
    for variant in ctx["variants"]:
        for batching in ctx["batching"]:
            row: list[Any] = [variant, "on" if batching else "off"]
            for mix in result["mixes"]:
                curve = capacity(curves, variant, batching, mix)
                summary = curve.summary() if curve else None
                row += (["-"] * 3 if summary is None else
                        [f"{'>= ' if not summary['bounded'] else ''}{summary['capacity_rps']:g}",
                         f"{summary['capacity_candidates_per_s']:,.0f}", f"{summary['low_load_p99_ms']:g}"])
            rows.append(row)
    lines += ["", "Capacity (the highest offered rate meeting the SLO; `>=`: no failing step above it):", "",
              *_table(header, rows), ""]
    if result["outside_inference"]:
        lines += ["Outside-inference share, (total - infer) / total from Server-Timing, sequential requests, "
                  "batching off:", "", *_table(
                      ["variant", "N", "requests", "median share", "overall share", "mean total ms", "mean infer ms"],
                      [[v, o["n"], o["requests"], f"{o['median_share']:.1%}", f"{o['overall_share']:.1%}",
                        o["mean_total_ms"], o["mean_infer_ms"]] for v, o in result["outside_inference"].items()]), ""]
    lines += ["Targets:", "", *_table(["target", "measured", "met"], [
        [t["target"], "-" if t["value"] is None else f"{t['value']:.3g}",
         "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")] for t in result["targets"]]), ""]
    lines += [f"Every step (offered req/s: p99 ms, failures; `x` fails the SLO; `late` when the generator sent its "
              f"p99 request more than {LATE_SENDER_MS:g} ms after schedule, i.e. it was short of CPU itself):", ""]
    for curve in curves:
        steps = ", ".join(f"{s.offered_rps:g}: {s.p99_ms:g}{'' if s.meets_slo else ' x'}"
                          f"{f' ({s.failures} failed)' if s.failures else ''}"
                          f"{' late' if s.send_lag_p99_ms > LATE_SENDER_MS else ''}"
                          for s in sorted(curve.steps, key=lambda s: s.offered_rps))
        lines.append(f"- {curve.variant}, batching {'on' if curve.batching else 'off'}, {curve.mix} "
                     f"(single-slot estimate {curve.single_slot_rps:g} req/s): {steps}")
    lines += ["", *(f"![{p.stem}]({os.path.relpath(p, out)})" for p in plots), "", MARK_END]
    return "\n".join(lines)


def write_markdown(path: Path, block: str) -> None:
    """Replace the marked block of `path` (or append it; a new page when there is none)."""
    text = path.read_text() if path.exists() else "# Capacity\n\n"
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def deciding_steps(curve: Curve) -> list[Step]:
    """One step per offered rate, by rate: a passing attempt if there is one, else the lower p99."""
    best: dict[float, Step] = {}
    for step in curve.steps:
        held = best.get(step.offered_rps)
        if held is None or (step.meets_slo, -step.p99_ms) > (held.meets_slo, -held.p99_ms):
            best[step.offered_rps] = step
    return [best[rate] for rate in sorted(best)]


def plot(curves: list[Curve], out: Path, prefix: str) -> list[Path]:
    """Per mix: latency percentiles against offered load, one panel per variant, batching off/on (dashed); the
    other attempt at a retried rate is an x (its p99)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for mix in dict.fromkeys(c.mix for c in curves):
        mine = [c for c in curves if c.mix == mix]
        variants = list(dict.fromkeys(c.variant for c in mine))
        fig, axes = plt.subplots(1, len(variants), figsize=(4.5 * len(variants), 3.8), squeeze=False)
        for ax, variant in zip(axes[0], variants, strict=True):
            for curve in (c for c in mine if c.variant == variant):
                steps = deciding_steps(curve)
                rates = [s.offered_rps for s in steps]
                style = "--" if curve.batching else "-"
                for pct, colour in (("p50", "tab:blue"), ("p90", "tab:orange"), ("p99", "tab:red")):
                    values = [min(getattr(s, f"{pct}_ms"), 1e4) for s in steps]
                    ax.plot(rates, values, style, color=colour, marker="o", markersize=3,
                            label=f"{pct}, batching {'on' if curve.batching else 'off'}")
                retried = [s for s in curve.steps if s not in steps]  # the other attempt at a retried rate
                ax.plot([s.offered_rps for s in retried], [min(s.p99_ms, 1e4) for s in retried], "x",
                        color="tab:red", alpha=0.5, markersize=4)
                ax.axhline(curve.slo_ms, color="grey", linewidth=0.8)
            ax.set(title=f"{variant} ({mix})", xlabel="offered load (req/s)", ylabel="latency (ms)", yscale="log")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{prefix}_{mix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# --- command line --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    split = lambda text: [item for item in text.split(",") if item]  # noqa: E731
    parser.add_argument("--model", type=Path, default=Path("model_store/default"))
    parser.add_argument("--variants", type=split, default=["vani", "uoi", "mari"])
    parser.add_argument("--batching", type=lambda t: [item == "on" for item in split(t)], default=[False, True],
                        help="off,on (comma-separated)")
    parser.add_argument("--mixes", type=split, default=["mix", "small"], help="mix (load test's) and/or small")
    parser.add_argument("--slo-ms", type=lambda t: dict((k, float(v)) for k, v in (i.split("=") for i in split(t))),
                        default=DEFAULT_SLO_MS, help="per mix, e.g. mix=150,small=50")
    parser.add_argument("--step-s", type=float, default=8.0, help="seconds of arrivals per step")
    parser.add_argument("--max-steps", type=int, default=10, help="steps per curve at most (retries count)")
    parser.add_argument("--min-requests", type=int, default=40, help="a slow step lasts until this many arrivals")
    parser.add_argument("--max-step-s", type=float, default=25.0, help="... but never longer than this")
    parser.add_argument("--calibration-s", type=float, default=CALIBRATION_S)
    parser.add_argument("--bodies", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--outside-n", type=int, default=1000, help="N of the outside-inference requests")
    parser.add_argument("--outside-requests", type=int, default=30, help="0: skip that measurement")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--server-env", action="append", default=[], metavar="RANKER_X=VALUE")
    parser.add_argument("--ready-timeout-s", type=float, default=600.0)
    modes, default_mode = compile_modes()
    parser.add_argument("--compile", choices=modes, default=default_mode,
                        help=f"RANKER_COMPILE of the servers (default: the service's, {default_mode})")
    parser.add_argument("--quick", action="store_true", help="2 steps of 2 s per curve, 1 s calibration (tests)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="capacity.json, capacity.md, capacity_*.png")
    parser.add_argument("--prefix", default="capacity", help="file name prefix in --out")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="server logs (default loadtest/results/capacity_<UTC timestamp>)")
    parser.add_argument("--report-from", type=Path, default=None,
                        help="a capacity.json: write the report (markdown, plots, JSON) again without measuring")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.report_from:
        result = load_result(args.report_from)
        args.out.mkdir(parents=True, exist_ok=True)
    else:
        result = measure(parser, args, argv)
        if result is None:
            return 2
    result["targets"] = targets(result["curves"], result["outside_inference"])
    plots = plot(result["curves"], args.out, args.prefix)
    write_markdown(args.out / f"{args.prefix}.md", markdown(result, plots, args.out))
    data = {**result, "curves": [{**asdict(c), "summary": c.summary()} for c in result["curves"]]}
    (args.out / f"{args.prefix}.json").write_text(json.dumps(data, indent=2, default=str))
    print(f"wrote {args.out / args.prefix}.json, .md, " + ", ".join(str(p) for p in plots))
    return 0


def measure(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any] | None:
    """The whole sweep, with the context the report needs; None when a server could not run."""
    if args.quick:
        args.step_s, args.max_steps, args.calibration_s, args.min_requests = 2.0, 2, 1.0, 1
        args.outside_requests = min(args.outside_requests, 5)
    if missing := [m for m in args.mixes if m not in args.slo_ms or m not in DEFAULT_SLO_MS]:
        parser.error(f"unknown mix or no SLO for {missing}; mixes: {sorted(DEFAULT_SLO_MS)}")
    if not args.model.exists():
        parser.error(f"no model at {args.model}: train one first (`make train`)")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.results_dir = args.results_dir or REPO_ROOT / "loadtest" / "results" / f"capacity_{stamp}"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        result = run_all(args)
    except RunError as exc:
        print(f"capacity sweep could not run: {exc}", file=sys.stderr)
        return None
    result["context"] = {
        "command": "python -m bench.capacity " + shlex.join(sys.argv[1:] if argv is None else argv),
        "started_utc": stamp, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
                                         f"{platform.python_version()}",
        "slo_ms": {m: args.slo_ms[m] for m in args.mixes}, "step_s": args.step_s, "min_requests": args.min_requests,
        "max_step_s": args.max_step_s, "max_steps": args.max_steps,
        "variants": args.variants, "batching": args.batching, "torch_threads": args.torch_threads,
        "server_env": args.server_env, "model": str(args.model)}
    return result


def load_result(path: Path) -> dict[str, Any]:
    """A saved capacity.json back into curves, to redo the report without measuring again."""
    data: dict[str, Any] = json.loads(path.read_text())
    data["curves"] = [Curve(**{k: v for k, v in c.items() if k not in ("steps", "summary")},
                            steps=[Step(**step) for step in c["steps"]]) for c in data["curves"]]
    return data

if __name__ == "__main__":
    sys.exit(main())
