"""This service against what a team would deploy instead: same trained model, same open-loop traffic, same CPU.

    make peers                          # once: .venv-peers with KServe (a benchmark extra, never in .venv)
    python -m bench.peers --out docs    # -> docs/peers.json, docs/peers.md, docs/peers_*.png (about 30 min)
    python -m bench.peers --quick --servers plain,mari --models default    # a smoke run

Servers (bench/peers_servers.py): "plain", FastAPI + uvicorn around the user's eager model (the afternoon
baseline, bench/peers_plain_app.py); "kserve", KServe's ModelServer around the same eager model, V2 JSON
(bench/peers_kserve.py); and this service: "vani" (RANKER_VARIANT=vani), "mari" (as shipped: the auto default)
and "mari_best" (BEST_ENV). One worker and one torch thread each; each server pinned to one core and the load
generator to the others (--no-pin: not pinned).

Models: "default" (--model, a `ranker train` MMoE) and "flat" (bench.conventions' DeepCTR-style flat-tensor
model at production size, packaged into a temporary store). The peers run the same module eagerly, with the
artifact's weights (bench/peers_models.py). Every body is sent columnar (the plain app takes only that form).

Per model x server x mix: bench.capacity's calibration and sweep, i.e. capacity at the mix's SLO with zero
failures. Then one step at a common rate, COMMON_SHARE x the weakest peer's capacity (of every server when no
peer runs), with the same arrivals on every server: p50/p99, and CPU seconds per 1,000 candidates (the
server's process tree's CPU time over that step, from /proc, over the candidates scored). Peers run first; a
server that was up before the common rate was known is started again for its common step. And the model-only
ceiling (bench/peers_ceiling.py): this service's MaRI variant, built as the "mari" server builds it, called back
to back in-process on the small mix's encoded requests (no HTTP, no JSON), on the servers' core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.capacity import (
    DEFAULT_SLO_MS,
    Curve,
    Target,
    build_mixes,
    calibrate,
    encode_pool,
    machine_load,
    open_loop,
    summarize,
    sweep,
)
from bench.peers_models import package_flat
from bench.peers_report import write_report
from bench.peers_servers import columnar, pinned, start_kserve, start_ours, start_plain, target_for, tree_cpu_s
from loadtest.run import REPO_ROOT, SERVER_ENV_PREFIXES, RunError, Server, server_settings
from loadtest.traffic import Body, describe_pool
from service.features.schema import FeatureSchema
from service.store.artifact import read_manifest
from service.store.versions import resolve_version

BEST_ENV = ["RANKER_COMPILE=inductor", "RANKER_BATCHING=true"]  # this service at its best: edit here
# "mari" is the service as shipped: RANKER_VARIANT=auto, the default (the form measured fastest per request size;
# MaRI at every size of these mixes on the default model); "mari_best" names MaRI with BEST_ENV.
OURS: dict[str, tuple[str, list[str]]] = {"vani": ("vani", []), "mari": ("auto", []), "mari_best": ("mari", BEST_ENV)}
PEERS = ("plain", "kserve")
SERVERS = (*PEERS, *OURS)
MODELS = ("default", "flat")
ABOUT = {"default": "the --model artifact, served as stored; the peers rebuild its architecture from the registry",
         "flat": "bench.conventions' DeepCTR-style model at production size (embedding 16, DNN 512-256), user and "
                 "candidate columns interleaved in its one float tensor, seeded weights, packaged by "
                 "bench.peers_models.package_flat into a temporary store; its schema interleaves user and "
                 "candidate features in the model's column order"}
COMMON_SHARE = 0.5  # of the weakest peer's capacity: a rate every peer passes
COMMON_SEED = 10_007  # the common step's arrivals (bodies, order) are the same on every server


def start(server: str, model: Path, args: argparse.Namespace, log: Path) -> Server:
    if server == "plain":
        return start_plain(model, args.torch_threads, args.server_cpu, log, args.ready_timeout_s)
    if server == "kserve":
        return start_kserve(model, args.torch_threads, args.server_cpu, log, args.ready_timeout_s)
    variant, env = OURS[server]
    return start_ours(variant, [*env, *args.server_env], model, args.torch_threads, args.server_cpu, log,
                      args.ready_timeout_s)


@contextmanager
def running(server: str, model: Path, args: argparse.Namespace, model_name: str,
            result: dict[str, Any]) -> Iterator[Server]:
    """A started server (ready), its start-up time in result["ready_s"]; stopped on exit."""
    started = time.perf_counter()
    with start(server, model, args, args.results_dir / f"{model_name}_{server}.log") as up:
        ready = round(time.perf_counter() - started, 1)
        result["ready_s"].setdefault(server, ready)
        print(f"  {server} ready in {ready}s at {up.url}", flush=True)
        yield up


def floor_capacity(curve: Curve) -> float:
    """The capacity, or half the lowest rate tried when even that failed (a common rate must stay positive)."""
    best = curve.best
    return best.offered_rps if best else min(step.offered_rps for step in curve.steps) / 2


def common_step(name: str, server: Server, pool: list[Body], rate: float, target: Target, args: argparse.Namespace,
                slo_ms: float) -> dict[str, Any]:
    """One open-loop step at `rate`, with the server's CPU time over it."""
    duration = min(max(args.step_s, args.min_requests / rate), args.max_step_s)
    assert server.process is not None
    before = tree_cpu_s(server.process.pid)
    samples = asyncio.run(open_loop(server.url, pool, rate, duration, target, COMMON_SEED))
    cpu_s = tree_cpu_s(server.process.pid) - before
    step = summarize(samples, rate, duration, slo_ms)
    candidates = sum(sample.n for sample in samples if sample.ok)
    print(f"    {name} common rate {rate:g}: p50={step.p50_ms} p99={step.p99_ms} ms failures={step.failures}"
          f" cpu={cpu_s:.2f}s for {candidates} candidates", flush=True)
    return {**asdict(step), "cpu_s": round(cpu_s, 3), "candidates": candidates,
            "cpu_s_per_1k_candidates": round(cpu_s / candidates * 1e3, 4) if candidates else None}


def ceiling(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The model-only ceiling (bench/peers_ceiling.py) in its own process, with the "mari" server's settings and
    core: this service's MaRI variant alone, back to back on the small mix's encoded requests."""
    variant, env = OURS["mari"]
    settings = server_settings(argparse.Namespace(model=model, torch_threads=args.torch_threads,
                                                  server_env=[*env, *args.server_env]), variant)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(SERVER_ENV_PREFIXES)}
    command = pinned([sys.executable, "-m", "bench.peers_ceiling", "--model", str(model), "--seconds",
                      str(args.ceiling_s), "--seed", str(args.seed), "--bodies", str(args.bodies)], args.server_cpu)
    done = subprocess.run(command, cwd=REPO_ROOT, env={**inherited, "PYTHONPATH": str(REPO_ROOT), **settings},
                          capture_output=True, text=True, timeout=args.ready_timeout_s + 60 * args.ceiling_s)
    if done.returncode != 0:
        raise RunError(f"the model-only ceiling failed ({done.returncode}): {done.stderr[-2000:]}")
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  model-only ceiling (MaRI, in-process): {measured['requests_per_s']:g} req/s", flush=True)
    return measured


def run_model(name: str, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every selected server on one model, peers first; see the module docstring."""
    manifest = read_manifest(resolve_version(model))
    schema, tasks = FeatureSchema.from_dict(manifest.feature_schema), list(manifest.tasks)
    pools = {mix: [columnar(body, schema) for body in pool]
             for mix, pool in build_mixes(model, args.mixes, args.seed, args.bodies).items()}
    result: dict[str, Any] = {"path": str(model), "about": ABOUT[name], "tasks": tasks, "ceiling": None,
                              "curves": [], "common": {}, "common_rates": {}, "ready_s": {},
                              "mixes": {mix: describe_pool(pool) for mix, pool in pools.items()}}
    if args.ceiling_s > 0 and "small" in pools:
        result["ceiling"] = ceiling(model, args)
    order = [server for server in SERVERS if server in args.servers]
    reference = [server for server in order if server in PEERS] or order
    curves: dict[tuple[str, str], Curve] = {}
    pending: list[str] = []
    for server in order:
        variant = OURS[server][0] if server in OURS else None
        target = target_for(server, variant, tasks, schema)
        encoded = {mix: encode_pool(pool, target) for mix, pool in pools.items()}
        with running(server, model, args, name, result) as up:
            for mix, pool in encoded.items():
                estimate = calibrate(up.url, pool, server, args.calibration_s, target)  # also a warm-up
                batching = server in OURS and "RANKER_BATCHING=true" in [*OURS[server][1], *args.server_env]
                curve = Curve(server, batching, mix, args.slo_ms[mix], round(estimate, 2))
                curves[(server, mix)] = sweep(up.url, pool, curve, args, target)
                result["curves"].append(curve)
            if not result["common_rates"] and all((s, m) in curves for s in reference for m in pools):
                result["common_rates"] = {m: max(0.01, round(COMMON_SHARE * min(floor_capacity(curves[(s, m)])
                                                                               for s in reference), 2)) for m in pools}
            if result["common_rates"]:
                result["common"][server] = {m: common_step(server, up, encoded[m], result["common_rates"][m], target,
                                                           args, args.slo_ms[m]) for m in pools}
            else:
                pending.append(server)
    for server in pending:  # up before the common rate was known: started again for its common step
        variant = OURS[server][0] if server in OURS else None
        target = target_for(server, variant, tasks, schema)
        with running(server, model, args, name, result) as up:
            result["common"][server] = {}
            for mix, pool in pools.items():
                encoded = encode_pool(pool, target)
                calibrate(up.url, encoded, server, args.calibration_s, target)  # a warm-up only
                result["common"][server][mix] = common_step(server, up, encoded, result["common_rates"][mix], target,
                                                             args, args.slo_ms[mix])
    result["curves"] = [{**asdict(curve), "summary": curve.summary()} for curve in result["curves"]]
    return result


def measure(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Every model; the context the report states (machine, settings, timing)."""
    started, stamp = time.perf_counter(), datetime.now(UTC)
    loads = [machine_load()]
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="peers-store-") as tmp:
        for name in args.models:
            path = args.model if name == "default" else package_flat(Path(tmp))
            print(f"model {name}: {path}", flush=True)
            models[name] = run_model(name, path, args)
            loads.append(machine_load())
    return {"models": models, "context": {
        "command": command, "quick": args.quick, "started_utc": stamp.isoformat(timespec="seconds"),
        "minutes": round((time.perf_counter() - started) / 60, 1), "nproc": os.cpu_count(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "torch": torch.__version__, "machine_load": loads, "servers": args.servers, "mixes": args.mixes,
        "slo_ms": {m: args.slo_ms[m] for m in args.mixes}, "step_s": args.step_s, "max_steps": args.max_steps,
        "min_requests": args.min_requests, "max_step_s": args.max_step_s, "torch_threads": args.torch_threads,
        "server_cpu": args.server_cpu, "generator_cpus": args.generator_cpus, "best_env": BEST_ENV,
        "server_env": args.server_env, "common_share": COMMON_SHARE, "ceiling_s": args.ceiling_s,
        "ours_defaults": ours_defaults()}}


def ours_defaults() -> dict[str, Any]:
    """The service's own defaults of the settings BEST_ENV changes: what "as shipped" means in this run."""
    from service.serving.settings import Settings

    return {name: Settings.model_fields[name].default for name in ("compile", "batching")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    split = lambda text: [item for item in text.split(",") if item]  # noqa: E731
    parser.add_argument("--model", type=Path, default=Path("model_store/default"), help="the default model")
    parser.add_argument("--models", type=split, default=list(MODELS), help=f"comma-separated, of {MODELS}")
    parser.add_argument("--servers", type=split, default=list(SERVERS), help=f"comma-separated, of {SERVERS}")
    parser.add_argument("--mixes", type=split, default=["small", "mix"], help="small and/or mix (bench.capacity's)")
    parser.add_argument("--slo-ms", type=lambda t: dict((k, float(v)) for k, v in (i.split("=") for i in split(t))),
                        default=DEFAULT_SLO_MS, help="per mix, e.g. mix=500,small=100")
    parser.add_argument("--step-s", type=float, default=4.0, help="seconds of arrivals per step")
    parser.add_argument("--max-steps", type=int, default=7, help="steps per sweep at most (retries count)")
    parser.add_argument("--min-requests", type=int, default=30, help="a slow step lasts until this many arrivals")
    parser.add_argument("--max-step-s", type=float, default=10.0, help="... but never longer than this")
    parser.add_argument("--calibration-s", type=float, default=2.0)
    parser.add_argument("--ceiling-s", type=float, default=5.0, help="model-only ceiling seconds (0: skip it)")
    parser.add_argument("--bodies", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--server-env", action="append", default=[], metavar="RANKER_X=VALUE",
                        help="added to every one of this service's servers (not the peers)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin each server to one core and the load generator to the others")
    parser.add_argument("--ready-timeout-s", type=float, default=900.0, help="inductor compiles at start-up")
    parser.add_argument("--quick", action="store_true", help="2 steps of 2 s per sweep, 1 s calibration and ceiling")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="peers.json, peers.md, peers_*.png")
    parser.add_argument("--prefix", default="peers", help="file name prefix in --out")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="server logs (default loadtest/results/peers_<UTC timestamp>)")
    parser.add_argument("--report-from", type=Path, default=None, help="a peers.json: write the report again")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for what, given, known in (("models", args.models, MODELS), ("servers", args.servers, SERVERS),
                               ("mixes", args.mixes, tuple(DEFAULT_SLO_MS))):
        if not given or any(item not in known for item in given):
            parser.error(f"--{what} must be a comma-separated subset of {known}, got {given}")
    if missing := [mix for mix in args.mixes if mix not in args.slo_ms]:
        parser.error(f"no SLO for mixes {missing}")
    if "default" in args.models and not args.model.exists():
        parser.error(f"no model at {args.model}: train one first (`make train`)")
    if any("=" not in item or not item.startswith("RANKER_") for item in args.server_env):
        parser.error(f"--server-env takes RANKER_NAME=VALUE, got {args.server_env}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.report_from:
        args.out.mkdir(parents=True, exist_ok=True)
        written = write_report(json.loads(args.report_from.read_text()), args.out, args.prefix)
        print("wrote " + ", ".join(str(path) for path in written))
        return 0
    check_args(parser, args)
    if args.quick:
        args.step_s, args.max_steps, args.calibration_s, args.min_requests = 2.0, 2, 1.0, 1
        args.ceiling_s = min(args.ceiling_s, 1.0)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.results_dir = args.results_dir or REPO_ROOT / "loadtest" / "results" / f"peers_{stamp}"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.peers " + shlex.join(sys.argv[1:] if argv is None else argv)
    cpus = sorted(os.sched_getaffinity(0))
    args.server_cpu = cpus[-1] if args.pin and len(cpus) > 1 else None
    args.generator_cpus = cpus[:-1] if args.server_cpu is not None else cpus
    try:
        os.sched_setaffinity(0, args.generator_cpus)  # the load generator, off the servers' core
        result = measure(args, command)
    except RunError as exc:
        print(f"bench.peers could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        os.sched_setaffinity(0, cpus)
    written = write_report(result, args.out, args.prefix)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
