"""Soak: the load test's request mix for N minutes against a real `ranker serve`, with a reload every few seconds;
RSS of every worker over time, and every failure. Not run in CI.

    python -m bench.soak --minutes 10 --workers 2 --reload-every-s 20 --out docs/soak.md
    python -m bench.soak --minutes 3 --store model_store --name default   # a trained store with >= 2 versions

Without --store it trains the small test model (tests/small_artifacts.py) as v1 and v2 into a temporary store.
Reloads alternate between the two newest versions through POST /admin/reload. A failure is any answer other
than 200 or 503 (shed, with Retry-After), or a transport error. Exit code 0 when there was none.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from loadtest.traffic import Body, TrafficMix, build_pool
from tests.api.live_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "soak-admin-token-0123456789"
READY_TIMEOUT_S = 300.0


@dataclass
class SoakLog:
    statuses: Counter[str] = field(default_factory=Counter)
    reloads: Counter[str] = field(default_factory=Counter)
    rss: list[tuple[float, dict[int, float]]] = field(default_factory=list)  # (seconds, {worker pid: MB})
    lock: threading.Lock = field(default_factory=threading.Lock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (keep-alive connections)")
    parser.add_argument("--reload-every-s", type=float, default=20.0)
    parser.add_argument("--sample-every-s", type=float, default=10.0, help="RSS sampling period")
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--name", default="default")
    parser.add_argument("--bodies", type=int, default=32)
    parser.add_argument("--n-max", type=int, default=1000, help="largest candidate count of the mix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="markdown report (default: print only)")
    args = parser.parse_args()

    store = args.store or _small_store(Path(tempfile.mkdtemp(prefix="soak-store-")))
    model_dir = store / args.name
    versions = sorted((c.name for c in model_dir.iterdir() if (c / "model.json").is_file()), key=_natural)[-2:]
    if len(versions) < 2:
        raise SystemExit(f"{model_dir}: need two versions to reload between, found {versions}")
    mix = TrafficMix(bodies=args.bodies, n_min=50, n_max=args.n_max, n_median=200, seed=args.seed)
    pool = build_pool(model_dir / versions[0], mix)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RANKER_MODEL_STORE": str(store), "RANKER_MODEL_NAME": args.name,
           "RANKER_ADMIN_TOKEN": ADMIN_TOKEN, "RANKER_MAX_CANDIDATES": str(max(args.n_max, 1000)),
           "RANKER_CONFIG_POLL_S": "2", "RANKER_DRAIN_DELAY_S": "0", "RANKER_LOG_LEVEL": "warning"}
    log_path = Path(tempfile.mkdtemp(prefix="soak-log-")) / "server.log"
    with open(log_path, "wb") as server_log:
        server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers",
                                   str(args.workers)], cwd=REPO_ROOT, env=env, stdout=server_log,
                                  stderr=subprocess.STDOUT)
        try:
            _wait_ready(url, server)
            log = _soak(url, server.pid, pool, versions, args)
        finally:
            server.terminate()
            server.wait(60)
    report = _report(log, args, versions, log_path)
    print(report)
    if args.out:
        args.out.write_text(report)
    failures = sum(count for status, count in log.statuses.items() if status not in ("200", "503"))
    sys.exit(1 if failures or log.reloads["failed"] else 0)


def _soak(url: str, server_pid: int, pool: list[Body], versions: list[str], args: argparse.Namespace) -> SoakLog:
    log = SoakLog()
    stop = threading.Event()
    started = time.monotonic()
    clients = [threading.Thread(target=_client, args=(url, pool, log, stop, args.seed + i), daemon=True)
               for i in range(args.clients)]
    for client in clients:
        client.start()
    deadline = started + args.minutes * 60
    next_reload, next_sample, index = started + args.reload_every_s, started, 0
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_sample:
            log.rss.append((now - started, _worker_rss(server_pid)))
            next_sample += args.sample_every_s
        if now >= next_reload:
            index += 1
            _reload(url, versions[index % 2], log)
            next_reload = time.monotonic() + args.reload_every_s
        time.sleep(0.2)
    stop.set()
    for client in clients:
        client.join(60)
    log.rss.append((time.monotonic() - started, _worker_rss(server_pid)))
    return log


def _client(url: str, pool: list[Body], log: SoakLog, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=60) as http:
        while not stop.is_set():
            body = rng.choice(pool)
            try:
                status = str(http.post(f"{url}/rank", content=body.payload, headers=headers).status_code)
            except httpx.TransportError as exc:
                status = type(exc).__name__
            with log.lock:
                log.statuses[status] += 1


def _reload(url: str, version: str, log: SoakLog) -> None:
    try:
        response = httpx.post(f"{url}/admin/reload", json={"version": version}, timeout=300,
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        log.reloads["ok" if response.status_code == 200 else "failed"] += 1
    except httpx.TransportError:
        log.reloads["failed"] += 1


def _worker_rss(server_pid: int) -> dict[int, float]:
    """RSS in MB of the serving processes: the uvicorn workers, or the server itself with one worker."""
    children = [int(pid) for pid in Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()]
    workers = [pid for pid in children if _rss(pid) > 100] or [server_pid]  # not multiprocessing's tracker
    return {pid: _rss(pid) for pid in workers}


def _rss(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not ready within {READY_TIMEOUT_S:g} s")


def _report(log: SoakLog, args: argparse.Namespace, versions: list[str], log_path: Path) -> str:
    command = "python -m bench.soak " + " ".join(sys.argv[1:])
    failures = {s: c for s, c in log.statuses.items() if s not in ("200", "503")}
    lines = [
        "# Soak: load mix with periodic reloads", "",
        f"Command: `{command}`  ",
        f"Model versions reloaded in turn: {', '.join(versions)}; server log: {log_path}", "",
        f"- duration {args.minutes:g} min, {args.workers} worker(s), {args.clients} keep-alive clients, "
        f"a reload every {args.reload_every_s:g} s",
        f"- requests: {sum(log.statuses.values())} ({dict(sorted(log.statuses.items()))}); failures: "
        f"{sum(failures.values())} {failures or ''}",
        f"- reloads: {dict(log.reloads)}", "",
        "RSS of each worker (MB) over time:", "",
    ]
    pids = sorted({pid for _, sample in log.rss for pid in sample})
    lines += ["| t (s) | " + " | ".join(f"worker {pid}" for pid in pids) + " |",
              "|---|" + "---|" * len(pids)]
    for seconds, sample in log.rss:
        lines.append(f"| {seconds:.0f} | " + " | ".join(f"{sample.get(pid, 0):.0f}" for pid in pids) + " |")
    return "\n".join(lines) + "\n"


def _small_store(root: Path) -> Path:
    from tests.small_artifacts import save_small_mmoe

    for version, seed in (("v1", 1), ("v2", 2)):
        save_small_mmoe(root, "default", version, seed)
    return root


def _natural(name: str) -> tuple[int, str]:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else -1, name)


if __name__ == "__main__":
    main()
