"""Realistic POST /rank traffic for locust: a population of users, heavy-tailed N, row-wise and columnar bodies.

The bodies (loadtest.traffic) exist before the first request: read from `--bodies-file` (what
`python -m loadtest.run` passes: one pool for every variant) or, standalone, generated at start from
`--model-path` and the mix options. Each simulated user picks bodies with its own seeded RNG and POSTs the
pre-encoded bytes, so the client spends its CPU on HTTP, not on building requests.

A response passes when it is a 200 whose `n_candidates` equals the N sent and, with `--expect-variant`, whose
X-Variant header names that variant. At exit the process fails (exit code 1) when any request failed, when
no request was made, or when the aggregated p99 exceeds `--p99-bound-ms` (0: no bound). With
`--results-prefix P` it writes the final P_stats.csv / P_failures.csv / P_exceptions.csv (locust's format)
and P_summary.json (candidates sent, the pool's N distribution, that verdict).

Standalone, from the repository root:
    locust -f loadtest/locustfile.py --headless -u 4 -r 4 -t 30s --host http://127.0.0.1:8000 \
        --model-path model_store/default --p99-bound-ms 2000
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
import sys
import threading
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, between, constant, events, task
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # locust puts only loadtest/ on the path
from loadtest.traffic import SHAPES, Body, TrafficMix, build_pool, describe_pool, load_pool  # noqa: E402

logger = logging.getLogger(__name__)

JSON_HEADERS = {"Content-Type": "application/json"}
N_CANDIDATES = re.compile(rb'"n_candidates"\s*:\s*(\d+)')


class BodyPool:
    """The bodies, and what was sent from them successfully (shared by every simulated user)."""

    def __init__(self) -> None:
        self.bodies: list[Body] = []
        self._lock = threading.Lock()
        self.ok_requests = {shape: 0 for shape in SHAPES}
        self.ok_candidates = {shape: 0 for shape in SHAPES}

    def record_ok(self, body: Body) -> None:
        with self._lock:
            self.ok_requests[body.shape] += 1
            self.ok_candidates[body.shape] += body.n


POOL = BodyPool()


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    defaults = TrafficMix()
    group = parser.add_argument_group("MaRI Serve traffic")
    group.add_argument("--bodies-file", default="", help="Saved body pool (loadtest.traffic.save_pool).")
    group.add_argument("--model-path", default="model_store/default", help="Without --bodies-file: the schema.")
    group.add_argument("--bodies", type=int, default=defaults.bodies, help="Bodies (= users in the population).")
    group.add_argument("--n-min", type=int, default=defaults.n_min)
    group.add_argument("--n-max", type=int, default=defaults.n_max)
    group.add_argument("--n-median", type=float, default=defaults.n_median, help="Log-normal median of N.")
    group.add_argument("--n-sigma", type=float, default=defaults.n_sigma, help="Log-normal shape of N.")
    group.add_argument("--columnar-share", type=float, default=defaults.columnar_share)
    group.add_argument("--body-seed", type=int, default=defaults.seed)
    group.add_argument("--think-ms", type=float, default=0.0, help="Mean pause between a user's requests.")
    group.add_argument("--p99-bound-ms", type=float, default=0.0, help="Fail the run above this p99; 0: none.")
    group.add_argument("--expect-variant", default="", help="Fail responses whose X-Variant differs.")
    group.add_argument("--results-prefix", default="", help="Write final stats CSVs and a summary JSON here.")


@events.init.add_listener
def _prepare(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    if options is None or POOL.bodies:
        return
    if options.bodies_file:
        POOL.bodies = load_pool(Path(options.bodies_file))
    else:
        mix = TrafficMix(options.bodies, options.n_min, options.n_max, options.n_median, options.n_sigma,
                         options.columnar_share, options.body_seed)
        POOL.bodies = build_pool(options.model_path, mix)
    if options.think_ms > 0:  # think time: uniform on [0, 2 * mean]
        RankUser.wait_time = between(0.0, 2 * options.think_ms / 1000)
    logger.info("body pool: %s", describe_pool(POOL.bodies))
    # Preparing blocked the event loop; refresh the loop's cached clock, or locust's --run-time timer
    # (scheduled next, relative to that clock) would fire early by as long as the preparation took.
    gevent.get_hub().loop.update_now()


@events.quitting.add_listener
def _verdict(environment: Any, **_: Any) -> None:
    """Exit code 1 on any failure, on no request at all, or on p99 above the bound (users have stopped)."""
    options = environment.parsed_options
    total = environment.stats.total
    p99_ms = total.get_response_time_percentile(0.99) if total.num_requests else None
    bound = options.p99_bound_ms if options is not None else 0.0
    reasons = []
    if total.num_requests == 0:
        reasons.append("no request was made")
    if total.num_failures > 0:
        reasons.append(f"{total.num_failures} of {total.num_requests} requests failed")
    if bound > 0 and p99_ms is not None and p99_ms > bound:
        reasons.append(f"p99 {p99_ms:g} ms > bound {bound:g} ms")
    if reasons:
        logger.error("load test failed: %s", "; ".join(reasons))
        environment.process_exit_code = 1
    if options is not None and options.results_prefix:
        write_results(environment, options.results_prefix, {
            "requests": total.num_requests,
            "failures": total.num_failures,
            "fail_ratio": total.fail_ratio,
            "p99_ms": p99_ms,
            "p99_bound_ms": bound,
            "ok_requests": POOL.ok_requests,
            "ok_candidates": POOL.ok_candidates,
            "pool": describe_pool(POOL.bodies),
            "failed_because": reasons,
        })


def write_results(environment: Any, prefix: str, summary: dict[str, Any]) -> None:
    """Final <prefix>_stats/_failures/_exceptions.csv (locust's format) and <prefix>_summary.json.

    Written here, after the users stopped: locust's own --csv files are rewritten once a second and flushed
    at exit from a possibly older snapshot, so their totals can miss the end of the run.
    """
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (("stats", writer.requests_csv), ("failures", writer.failures_csv),
                          ("exceptions", writer.exceptions_csv)):
        with open(f"{prefix}_{suffix}.csv", "w", newline="") as handle:
            write(csv.writer(handle))
    Path(f"{prefix}_summary.json").write_text(json.dumps(summary, indent=2))


class RankUser(FastHttpUser):
    """One simulated client: picks a body from the pool (own seeded RNG) and POSTs it to /rank."""

    wait_time = constant(0)  # closed loop by default: the next request as soon as the last one is answered
    _started = 0

    def on_start(self) -> None:
        RankUser._started += 1  # gevent: users start one at a time, in one thread
        options = self.environment.parsed_options
        self.rng = random.Random((options.body_seed if options else 0) * 7919 + RankUser._started)
        self.expect_variant = options.expect_variant if options else ""

    @task
    def rank(self) -> None:
        body = POOL.bodies[self.rng.randrange(len(POOL.bodies))]
        with self.client.post("/rank", data=body.payload, headers=JSON_HEADERS, name=f"/rank {body.shape}",
                              catch_response=True) as response:
            problem = check_response(response.status_code, response.headers, response.content, body.n,
                                     self.expect_variant)
            if problem:
                response.failure(problem)
            else:
                response.success()
                POOL.record_ok(body)


def check_response(status: int, headers: Any, content: bytes | None, n: int, expect_variant: str) -> str | None:
    """Why a /rank response is wrong, or None when it is right."""
    if status != 200:
        return f"HTTP {status}: {(content or b'')[:200]!r}"
    match = N_CANDIDATES.search(content or b"")
    if match is None or int(match.group(1)) != n:
        return f"n_candidates {match.group(1).decode() if match else 'missing'} != {n} sent"
    if expect_variant and headers.get("X-Variant") != expect_variant:
        return f"served by {headers.get('X-Variant')!r}, expected {expect_variant!r}"
    return None
