"""Prometheus metrics of the ranking service (docs/ARCHITECTURE.md section 4), base unit seconds, prefix `ranker_`.

Labels stay low-cardinality (variant, status, stage, model name/version, pid of a worker); never a user or
request id. A `model` label holds a served model's name only (UNKNOWN_MODEL for a request naming none), never
a client's string.
With several uvicorn workers, prometheus_client's multiprocess mode is used: `PROMETHEUS_MULTIPROC_DIR`
(set by `service.api.server.serve` before any worker starts) holds one file per process, and /metrics
sums them. Without it, each app instance keeps its own registry (so in-process tests do not collide).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

PREFIX = "ranker"
UNKNOWN_MODEL = "unknown"  # the `model` label of a request for a model this server does not serve
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch, read here and nowhere else

# End-to-end server time: a few ms for small N, tens to hundreds of ms at N = 1000 on 2 cores.
LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
# One stage: decode/encode/respond take well under a ms to a few ms; infer spans the latency range.
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
CANDIDATE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
BATCH_REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
SHADOW_DIFF_BUCKETS = (1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# Agreement of two model versions' top-k (overlap share in [0, 1]; Kendall tau and Spearman rho in [-1, 1]).
AGREEMENT_BUCKETS = (-0.5, 0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
VERSION_DIFF_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
STAGES = ("queue", "decode", "encode", "infer", "respond")  # label values of ranker_stage_duration_seconds
# prometheus_client's file of one live gauge mode of one process (livesum, liveall, livemax, ...)
LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class ServiceMetrics:
    """Every metric the service exports, created once per app."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # In multiprocess mode values live in files; registering them anywhere would only duplicate them.
        self.registry = None if self.multiprocess else CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests", "Rank requests by model, variant and HTTP status.", ["model", "variant", "status"],
            registry=registry,
        )
        self.v2_requests = Counter(
            f"{PREFIX}_v2_requests", "Open Inference Protocol (KServe V2) infer requests by model, variant and HTTP "
            "status; their stages, latency and candidates are in the same histograms as /rank's.",
            ["model", "variant", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_request_duration_seconds", "Server-side time of a rank request (queue to response body).",
            ["model", "version", "variant"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.stage_seconds = Histogram(
            f"{PREFIX}_stage_duration_seconds", "Time of one stage of a rank request.",
            ["model", "stage", "variant"], buckets=STAGE_BUCKETS, registry=registry,
        )
        self.candidates_per_request = Histogram(
            f"{PREFIX}_candidates_per_request", "Candidates in a scored request.", buckets=CANDIDATE_BUCKETS,
            registry=registry,
        )
        self.candidates_scored = Counter(
            f"{PREFIX}_candidates_scored", "Candidates scored (rate() gives throughput).",
            ["model", "version", "variant"],
            registry=registry,
        )
        self.auto_requests = Counter(
            f"{PREFIX}_auto_requests", "Requests the default `auto` choice served, by the form it ran (vani, uoi, "
            "mari); every other metric counts them under that form too.", ["model", "variant"], registry=registry,
        )
        self.batch_requests = Histogram(
            f"{PREFIX}_batch_requests", "Requests scored in one inference call (1 when batching is off).",
            ["model", "variant"], buckets=BATCH_REQUEST_BUCKETS, registry=registry,
        )
        self.batch_candidates = Histogram(
            f"{PREFIX}_batch_candidates", "Candidates scored in one inference call.", ["model", "variant"],
            buckets=CANDIDATE_BUCKETS, registry=registry,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_requests_in_flight", "Rank requests being served (waiting or scoring).",
            multiprocess_mode="livesum", registry=registry,
        )
        self.shadow_comparisons = Counter(
            f"{PREFIX}_shadow_comparisons", "Shadow comparisons made.", ["model", "primary", "shadow"],
            registry=registry,
        )
        self.shadow_mismatches = Counter(
            f"{PREFIX}_shadow_mismatches", "Shadow comparisons outside the tolerance.", ["model", "primary", "shadow"],
            registry=registry,
        )
        self.shadow_dropped = Counter(
            f"{PREFIX}_shadow_dropped", "Sampled requests not compared because the shadow queue was full.",
            registry=registry,
        )
        self.shadow_max_difference = Gauge(
            f"{PREFIX}_shadow_max_abs_difference", "Largest |shadow - primary| score seen since start.",
            multiprocess_mode="max", registry=registry,
        )
        self.shadow_difference = Histogram(
            f"{PREFIX}_shadow_abs_difference", "Largest |shadow - primary| score per comparison.",
            buckets=SHADOW_DIFF_BUCKETS, registry=registry,
        )
        self.model_info = Gauge(
            f"{PREFIX}_model_info", "1 for the model and default variant being served.",
            ["name", "version", "variant"], multiprocess_mode="livemax", registry=registry,
        )
        self.reloads = Counter(f"{PREFIX}_reloads", "Model version swaps by model and outcome.", ["model", "outcome"],
                               registry=registry)
        # One series per process and served model (multiprocess "liveall" adds the pid label itself): converged
        # when all of a model agree.
        # Made by the first set_config_generation: a process still starting shows no series rather than 0.
        self._config_generation: Gauge | None = None
        self._config_generation_lock = threading.Lock()
        self.config_rejections = Counter(
            f"{PREFIX}_config_rejections", "serving.json generations a process refused, by model and reason (invalid, "
            "model).",
            ["model", "reason"], registry=registry,
        )
        self._largest_difference = 0.0
        self._request_children: dict[tuple[str, str, str], tuple[Any, ...]] = {}  # see observe_request
        self._add_version_metrics(registry)

    def _add_version_metrics(self, registry: CollectorRegistry | None) -> None:
        """The comparison of two model versions on live traffic (service/serving/version_compare.py): how far
        they agree, not whether they match; labelled by the model, its primary version and the one compared."""
        pair = ["model", "primary_version", "other_version"]
        self.version_comparisons = Counter(
            f"{PREFIX}_version_comparisons", "Sampled requests scored on a second model version and compared.",
            pair, registry=registry,
        )
        self.version_disagreements = Counter(
            f"{PREFIX}_version_disagreements", "Version comparisons whose top-k overlap fell below compare.min_overlap "
            "(only counted when that bound is configured).", pair, registry=registry,
        )
        self.version_compare_dropped = Counter(
            f"{PREFIX}_version_compare_dropped", "Sampled requests not compared because the comparison queue was full.",
            registry=registry,
        )
        self.version_topk_overlap = Histogram(
            f"{PREFIX}_version_topk_overlap", "Share of the primary version's top-k also in the other's top-k.",
            pair, buckets=AGREEMENT_BUCKETS, registry=registry,
        )
        self.version_kendall_tau = Histogram(
            f"{PREFIX}_version_kendall_tau", "Kendall tau-b of two versions' scores over the primary's top-k.",
            pair, buckets=AGREEMENT_BUCKETS, registry=registry,
        )
        self.version_spearman = Histogram(
            f"{PREFIX}_version_spearman", "Spearman rho of two versions' scores over the primary's top-k.",
            pair, buckets=AGREEMENT_BUCKETS, registry=registry,
        )
        self.version_score_difference = Histogram(
            f"{PREFIX}_version_score_abs_difference", "p90 over a request's candidates of |primary - other| final "
            "score.", pair, buckets=VERSION_DIFF_BUCKETS, registry=registry,
        )

    def observe_request(self, model: str, version: str, variant: str, stage_seconds: tuple[float, ...], total: float,
                        candidates: int, auto: bool = False) -> None:
        """One scored request: the model and version that served it, the form that ran, its STAGES' seconds (in
        that order), its total and its candidates; `auto`: the default `auto` picked the form. Runs per request on
        the event loop, so each (model, version, variant)'s labelled children are looked up once and kept."""
        key = (model, version, variant)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                tuple(self.stage_seconds.labels(model=model, stage=stage, variant=variant) for stage in STAGES),
                self.request_seconds.labels(model=model, version=version, variant=variant),
                self.candidates_scored.labels(model=model, version=version, variant=variant),
                self.auto_requests.labels(model=model, variant=variant),
            )
        stages, request_seconds, candidates_scored, auto_requests = children
        if auto:
            auto_requests.inc()
        for child, seconds in zip(stages, stage_seconds, strict=True):
            child.observe(seconds)
        request_seconds.observe(total)
        self.candidates_per_request.observe(candidates)
        candidates_scored.inc(candidates)

    def observe_shadow(self, model: str, primary: str, shadow: str, difference: float, mismatched: bool) -> None:
        self.shadow_comparisons.labels(model=model, primary=primary, shadow=shadow).inc()
        # the series exists at 0
        mismatches = self.shadow_mismatches.labels(model=model, primary=primary, shadow=shadow)
        if mismatched:
            mismatches.inc()
        self.shadow_difference.observe(difference)
        if difference > self._largest_difference:
            self._largest_difference = difference
            self.shadow_max_difference.set(difference)

    def set_model(self, previous: tuple[str, str, str] | None, current: tuple[str, str, str]) -> None:
        """Point ranker_model_info at (name, version, variant)."""
        if previous is not None and previous != current:
            self.model_info.labels(*previous).set(0)
        self.model_info.labels(*current).set(1)

    def set_config_generation(self, model: str, generation: int) -> None:
        """The fleet config generation this process applies to `model` (each served model has its own file)."""
        with self._config_generation_lock:
            if self._config_generation is None:
                self._config_generation = Gauge(
                    f"{PREFIX}_config_generation",
                    "Fleet config generation this process applies to a model (0: its RANKER_* settings).",
                    ["model"] if self.multiprocess else ["model", "pid"], multiprocess_mode="liveall",
                    registry=self.registry,
                )
            gauge = self._config_generation
        labels = {"model": model} if self.multiprocess else {"model": model, "pid": str(os.getpid())}
        gauge.labels(**labels).set(generation)

    def exposition(self) -> tuple[bytes, str]:
        """The text format of every metric (summed over worker processes in multiprocess mode)."""
        if self.registry is None:  # multiprocess mode: read every process's files
            reap_dead_processes()  # a worker killed without shutting down must not count as in flight
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_process_dead() -> None:
    """Drop this process's live gauges from the multiprocess directory (on worker shutdown)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def reap_dead_processes() -> list[int]:
    """Drop the live gauges of processes that died without shutting down (kill -9, OOM); their pids.

    Their counters and histograms stay: the totals they served are kept.
    """
    directory = multiprocess_dir()
    if directory is None:
        return []
    matches = (LIVE_GAUGE_FILE.fullmatch(path.name) for path in Path(directory).iterdir())
    pids = {int(match.group(1)) for match in matches if match is not None}
    dead = sorted(pid for pid in pids if not process_alive(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    return dead


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet collected by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
