"""Load-test the variants: a real `ranker serve` per variant on 127.0.0.1, the same locust load against each.

    python -m loadtest.run --variants vani,uoi,mari --users 4 --spawn-rate 4 --duration 60s \
        --p99-bound-ms 2000 --out docs
    python -m loadtest.run --sweep --users-list 1,2,4,8 --duration 30s --out docs

Every variant gets the same users, spawn rate, duration and body pool (one file, generated once). CSVs,
logs and the pool go to loadtest/results/<timestamp>/ (git-ignored); the report to <out>/loadtest.md (sweep:
<out>/loadtest_sweep.md) and <out>/figures/loadtest_*.png. Server-side stage times come from /metrics
scraped before and after each locust run.

Exit code: 0 when every locust run passed (no failed request, p99 within --p99-bound-ms), 1 otherwise, 2
when a server or locust could not run at all. A sweep goes past saturation on purpose: it has no p99 bound,
reports failures (503s) per point and exits 0 unless something could not run. The model is not trained
here: when --model is missing the runner says how to train it (`ranker train`) and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
import typing
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import httpx

from loadtest.report import PointResult, Samples, parse_metrics, point_result, write_report, write_sweep_report
from loadtest.traffic import TrafficMix, build_pool, save_pool

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
HOST = "127.0.0.1"
READY_POLL_S = 0.25
STOP_GRACE_S = 30.0
LOCUST_STOP_TIMEOUT_S = 10  # locust lets in-flight requests finish this long after --run-time
LOCUST_SETUP_SLACK_S = 60.0  # locust start-up and reading the body pool, before --run-time starts
SERVER_ENV_PREFIXES = ("RANKER_", "PROMETHEUS_MULTIPROC_DIR")  # never inherited by the servers


class RunError(RuntimeError):
    """A server or locust could not run (not a failed load test: that is an exit code)."""


def parse_duration(text: str) -> int:
    """'90', '90s', '2m', '1h' -> seconds (> 0)."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip().lower()
    seconds = int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration must be > 0, got {text!r}")
    return seconds


def model_settings(model: Path) -> dict[str, str]:
    """RANKER_MODEL_* for model_store/<name> (latest version) or model_store/<name>/<version>."""
    from service.serving.settings import model_location  # torch: not in locust processes

    return model_location(model)


def server_settings(args: argparse.Namespace, variant: str) -> dict[str, str]:
    """Every RANKER_* setting of the server for `variant` (the report lists them). RANKER_COMPILE is always
    written: --compile, or the service's default where a caller's own namespace has no compile attribute."""
    compile_mode = getattr(args, "compile", None) or compile_modes()[1]
    settings = {**model_settings(args.model), "RANKER_VARIANT": variant, "RANKER_LOG_LEVEL": "warning",
                "RANKER_COMPILE": compile_mode}
    if args.torch_threads:
        settings["RANKER_TORCH_THREADS"] = str(args.torch_threads)
    settings.update(item.split("=", 1) for item in args.server_env)
    return settings


def compile_modes() -> tuple[list[str], str]:
    """RANKER_COMPILE's values and the service's default: what production serves is what a load test measures."""
    from service.serving.settings import Settings

    field = Settings.model_fields["compile"]
    return list(typing.get_args(field.annotation)), field.default


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def kill_group(process: subprocess.Popen, grace_s: float) -> int:
    """SIGTERM the process group (graceful), SIGKILL it after grace_s; returns the exit code."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
            process.wait(grace_s)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


class Server:
    """`ranker serve` for one variant on a free 127.0.0.1 port; ready once /readyz says so."""

    ready_path = "/readyz"  # bench.peers' peer servers (a plain FastAPI app, KServe) answer elsewhere

    def __init__(self, variant: str, args: argparse.Namespace, log_path: Path) -> None:
        self.variant = variant
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.ready_timeout_s = args.ready_timeout_s
        # Inherited RANKER_* (a config file, an A/B split) would make runs differ: only what is listed here counts.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(SERVER_ENV_PREFIXES)}
        self.env = {**inherited, "PYTHONPATH": str(REPO_ROOT), **server_settings(args, variant)}
        self.command = [sys.executable, "-m", "service.cli", "serve", "--host", HOST, "--port", str(self.port),
                        "--workers", str(args.workers)]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RunError(f"{self.variant} server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(READY_POLL_S)
        raise RunError(f"{self.variant} server not ready within {self.ready_timeout_s:g}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None:
            kill_group(self.process, STOP_GRACE_S)

    def scrape(self) -> Samples:
        response = httpx.get(f"{self.url}/metrics", timeout=10.0)
        response.raise_for_status()
        return parse_metrics(response.text)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "(no log)"


def locust_command(args: argparse.Namespace, url: str, variant: str, users: int, prefix: Path,
                   p99_bound_ms: float) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", url, "-u", str(users), "-r", str(args.spawn_rate), "-t", f"{args.duration}s",
        "--stop-timeout", str(LOCUST_STOP_TIMEOUT_S), "--loglevel", "WARNING",
        "--csv", str(prefix.parent / "live" / prefix.name),  # locust's own, with the per-second history
        "--bodies-file", str(args.bodies_file), "--body-seed", str(args.seed), "--think-ms", str(args.think_ms),
        "--p99-bound-ms", str(p99_bound_ms), "--expect-variant", variant,
        "--results-prefix", str(prefix),  # final totals, written by the locustfile
    ]


def run_locust(command: list[str], log_path: Path, duration_s: int) -> int:
    """Run locust to completion (bounded in time); its exit code."""
    timeout_s = duration_s + LOCUST_STOP_TIMEOUT_S + LOCUST_SETUP_SLACK_S
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        raise RunError(f"locust did not finish within {timeout_s:g}s; see {log_path}") from None
    finally:
        kill_group(process, LOCUST_STOP_TIMEOUT_S)


def measure(args: argparse.Namespace, server: Server, users: int, results: Path, p99_bound_ms: float) -> PointResult:
    """One locust run against a running server, with /metrics scraped before and after."""
    prefix = results / f"{server.variant}_u{users}"
    before = server.scrape()
    exit_code = run_locust(locust_command(args, server.url, server.variant, users, prefix, p99_bound_ms),
                           Path(f"{prefix}_locust.log"), args.duration)
    after = server.scrape()
    if not Path(f"{prefix}_stats.csv").exists() or not Path(f"{prefix}_summary.json").exists():
        raise RunError(f"locust exited with {exit_code} without writing its stats; see {prefix}_locust.log")
    result = point_result(server.variant, users, exit_code, prefix, before, after)
    print(f"  {server.variant:5s} users={users:<3d} exit={exit_code} requests={result.requests} "
          f"failures={result.failures} req/s={result.requests_per_s:.1f} cand/s={result.candidates_per_s:,.0f} "
          f"p50={result.p50_ms:g} p99={result.p99_ms:g} ms", flush=True)
    return result


def run_all(args: argparse.Namespace, results: Path) -> list[PointResult]:
    started = time.perf_counter()
    args.bodies_file = results / "bodies.tsv"
    save_pool(build_pool(args.model, args.mix), args.bodies_file)
    print(f"{args.bodies} bodies in {time.perf_counter() - started:.1f}s -> {args.bodies_file}", flush=True)
    points = []
    users_list = args.users_list if args.sweep else [args.users]
    bound = 0.0 if args.sweep else args.p99_bound_ms  # a sweep goes past saturation on purpose
    for variant in args.variants:
        started = time.perf_counter()
        with Server(variant, args, results / f"server_{variant}.log") as server:
            print(f"{variant} server ready in {time.perf_counter() - started:.1f}s at {server.url}", flush=True)
            for users in users_list:
                points.append(measure(args, server, users, results, bound))
    return points


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="vani,uoi,mari", type=lambda s: [v for v in s.split(",") if v])
    parser.add_argument("--model", type=Path, default=Path("model_store/default"),
                        help="model_store/<name> (latest version) or a version folder")
    parser.add_argument("--users", type=int, default=4, help="concurrent simulated users")
    parser.add_argument("--spawn-rate", type=float, default=4.0, help="users started per second")
    parser.add_argument("--duration", type=parse_duration, default=parse_duration("60s"), help="e.g. 60s, 2m")
    parser.add_argument("--p99-bound-ms", type=float, default=2000.0, help="a run fails above this p99 (0: none)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="report folder (figures in <out>/figures)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="CSVs and logs (default loadtest/results/<UTC timestamp>)")
    parser.add_argument("--sweep", action="store_true", help="sweep --users-list instead of one --users run")
    parser.add_argument("--users-list", default=[1, 2, 4, 8], type=lambda s: [int(u) for u in s.split(",") if u])
    traffic = parser.add_argument_group("traffic (same for every variant)")
    traffic.add_argument("--bodies", type=int, default=64, help="pre-generated bodies, one per population user")
    traffic.add_argument("--n-min", type=int, default=100)
    traffic.add_argument("--n-max", type=int, default=3000)
    traffic.add_argument("--n-median", type=float, default=300.0, help="log-normal median of N before clipping")
    traffic.add_argument("--n-sigma", type=float, default=0.9, help="log-normal shape of N")
    traffic.add_argument("--columnar-share", type=float, default=0.5)
    traffic.add_argument("--think-ms", type=float, default=0.0, help="mean pause between requests (0: closed loop)")
    traffic.add_argument("--seed", type=int, default=0)
    server = parser.add_argument_group("server")
    server.add_argument("--workers", type=int, default=1)
    server.add_argument("--torch-threads", type=int, default=1,
                        help="RANKER_TORCH_THREADS (default 1: leaves a core to locust on 2 cores; 0: torch's)")
    server.add_argument("--server-env", action="append", default=[], metavar="RANKER_X=VALUE",
                        help="extra server setting, repeatable")
    server.add_argument("--ready-timeout-s", type=float, default=300.0)
    modes, default_mode = compile_modes()
    server.add_argument("--compile", choices=modes, default=default_mode,
                        help=f"RANKER_COMPILE of the servers (default: the service's, {default_mode})")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from service.engine import Variant

    known = {v.value for v in Variant}
    if not args.variants or any(v not in known for v in args.variants):
        parser.error(f"--variants must be a comma-separated subset of {sorted(known)}, got {args.variants}")
    if len(set(args.variants)) != len(args.variants):
        parser.error(f"--variants lists a variant twice: {args.variants}")
    if args.users < 1 or not args.users_list or min(args.users_list) < 1 or args.spawn_rate <= 0:
        parser.error("--users, --users-list and --spawn-rate must be positive")
    if any("=" not in item or not item.startswith("RANKER_") for item in args.server_env):
        parser.error(f"--server-env takes RANKER_NAME=VALUE, got {args.server_env}")
    try:
        args.mix = TrafficMix(args.bodies, args.n_min, args.n_max, args.n_median, args.n_sigma,
                              args.columnar_share, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.model.exists():
        print(f"no model at {args.model}: train one first, e.g.\n"
              f"    ranker train --name {args.model.name} --store {args.model.parent}\n"
              f"(or `make train` for model_store/default), then rerun, or point --model at an artifact",
              file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results = args.results_dir or REPO_ROOT / "loadtest" / "results" / stamp
    results.mkdir(parents=True, exist_ok=True)
    command = "python -m loadtest.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        points = run_all(args, results)
    except RunError as exc:
        print(f"load test could not run: {exc}", file=sys.stderr)
        return 2
    context = {"command": command, "started_utc": stamp, "results_dir": str(results), "model": str(args.model),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
                          f"{platform.python_version()}", "args": {k: str(v) for k, v in vars(args).items()},
               "server_settings": {k: v for k, v in server_settings(args, "<variant>").items()
                                   if k != "RANKER_MODEL_STORE"}}
    (results / "results.json").write_text(json.dumps({**context, "points": [asdict(p) for p in points]}, indent=2))
    written = (write_sweep_report if args.sweep else write_report)(points, args, context, args.out)
    print("wrote " + ", ".join(str(path) for path in written))
    failed = [f"{p.variant} (users {p.users}): exit {p.exit_code} {'; '.join(p.failed_because)}"
              for p in points if p.exit_code != 0]
    if failed and not args.sweep:
        print("FAILED: " + " | ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
