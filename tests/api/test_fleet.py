"""The fleet, for real: two `ranker serve` processes on one store (one of them with 2 uvicorn workers) serving two
models, `default` and `other`, follow model_store/<name>/serving.json while closed-loop clients keep ranking on
both. One fleet for every test here (its start-up, three processes importing torch and building both models, is
most of the cost), in this order:

1. config changes (from a fresh fleet: no serving.json, only default/v1 in the store, generation 0): a variant
   switch, an A/B split and a new version reach every worker of both servers with no failed request;
2. a bad generation (from the last good one, whichever it is) is refused and counted by every worker while the
   last good one keeps serving, then the next good one is applied everywhere;
3. a version canary (issue 19 item 4; from whatever generation g0 the fleet is at, first set back to v1 for
   everyone at g0 + 1): `ranker config set --canary` reaches every worker of both servers (g0 + 2), 2,000 users
   split over the two versions as the version hash says (each user on the same version on both servers, the
   canary's share within binomial tolerance), `--rollback` converges back to one version (g0 + 3), sampled
   requests are compared on the other version (metrics, /v1/models), and a closed-loop client on both servers
   and both models sees zero failed requests throughout;
4. `ranker serve` refuses to start on an unusable fleet config (no fleet).

The other model never has a serving.json: every worker serves it at generation 0 from start to end (test 3
checks it last)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Self

import httpx
import pytest

from service.engine import Variant
from service.serving.fleet_config import FleetConfigFile
from service.serving.routing import VariantRouter, VersionRouter
from tests.api.conftest import ADMIN_HEADERS, ADMIN_TOKEN, MODEL_NAME, rank_body
from tests.api.live_server import REPO_ROOT, LiveServer
from tests.api.metrics_text import parse_metrics, total

OTHER = "other"  # the second model: trained apart, never given a serving.json
MODELS = (MODEL_NAME, OTHER)
WORKERS = {"single": 1, "double": 2}  # uvicorn workers per server
POLL_S = 1.0  # two intervals (2 s) leave margin on a loaded 2-core box (0.5 s once took 1.12 s)
WAIT_TIMEOUT_S = 60.0  # bound of every wait for the fleet in the config tests
CANARY_WAIT_TIMEOUT_S = 120.0  # bound of every wait in the canary test (three processes build v2 on 2 shared cores)
SCRAPE_EVERY_S = 0.05
JSON = {"content-type": "application/json"}

# --- the config changes ---
DWELL_S = 1.0  # traffic after each convergence, whose answers must all show the new config
MAX_REQUESTS_PER_SERVER = 10_000
USERS = 40  # distinct user ids (and bodies): the A/B split routes some of them to each arm
# A client's pace between requests. Without it the two threads sent ~80 requests/s on fresh connections (7,751 in
# one run), which took a core from the three processes building v2 (each build 38-40 s instead of a few): the
# test is about no failed request while the config changes, not about load. At this pace each thread still
# sends ~15 requests/s, hundreds through every build and swap, and some to each server after every convergence.
THINK_S = 0.05
SPLIT = {"mari": 0.5, "vani": 0.5}
BUILT = re.compile(rf"model {MODEL_NAME}/(\S+) built and warmed in ([\d.]+)s")
APPLIED = re.compile(r"^(\S+ \S+) INFO service.serving.config_watch: fleet config generation (\d+) applied "
                     rf"\(from .*?\): model {MODEL_NAME}/", re.M)  # the default model's generations only
READY = re.compile(r"INFO service.api.app: ready: model (\S+)/")  # one line per worker process and model
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"  # logging's asctime, local time

# --- the canary ---
MAX_REQUESTS = 5_000  # per server, of the canary test's background client
SPLIT_USERS = 2_000  # distinct users ranked once each while the canary holds
BOTH_SERVERS_USERS = 200  # of them, also ranked on the other server: one version per user, fleet-wide
CANARY_WEIGHT = 0.2
COMPARE_SAMPLE_RATE = 0.05  # of ~2,200 canary-time requests: ~110 compared on the other version
SIGMAS = 5.0  # tolerance of the canary's share: a correct split fails it about once in 3.5 million runs


@dataclass
class Fleet:
    model_dir: Path  # the default model's folder: the one whose config changes
    servers: dict[str, LiveServer]  # "single" (1 worker) and "double" (2 workers)
    pids: dict[str, set[str]]  # worker pids per server, from ranker_config_generation

    def generations(self, model: str = MODEL_NAME) -> dict[str, dict[str, float]]:
        """ranker_config_generation of `model` per server and worker pid (fresh connections: any worker answers;
        each worker reports one series per model it serves)."""
        found = {}
        for name, server in self.servers.items():
            samples = parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text)
            found[name] = {dict(labels)["pid"]: value for (metric, labels), value in samples.items()
                           if metric == "ranker_config_generation" and dict(labels).get("model") == model}
        return found

    def converge(self, generation: int, model: str = MODEL_NAME, timeout_s: float = WAIT_TIMEOUT_S) -> float:
        """Wait until every worker of every server applies `generation` of `model`; the wall-clock time it did."""
        deadline = time.monotonic() + timeout_s
        seen: dict[str, dict[str, float]] = {}
        while time.monotonic() < deadline:
            seen = self.generations(model)
            assert {name: set(pids) for name, pids in seen.items()} == self.pids, seen  # no worker restarted
            if all(value == generation for pids in seen.values() for value in pids.values()):
                return time.time()
            time.sleep(SCRAPE_EVERY_S)
        raise AssertionError(f"{model}: generation {generation} not applied everywhere in {timeout_s}s: {seen}")

    def rejections(self, reason: str) -> float:
        """Generations refused for `reason`, every model of every worker of both servers."""
        return sum(total(parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text),
                         "ranker_config_rejections_total", reason=reason) for server in self.servers.values())

    def comparisons(self) -> float:
        """Comparisons of the default model's v1 against v2 (the top-k overlap histogram's count), both servers."""
        return sum(total(parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text),
                         "ranker_version_topk_overlap_count", model=MODEL_NAME, primary_version="v1",
                         other_version="v2") for server in self.servers.values())

    def wait_for_comparisons(self, before: float) -> float:
        """The comparisons made once at least one more than `before` is recorded (they run on a background
        thread)."""
        deadline = time.monotonic() + CANARY_WAIT_TIMEOUT_S
        while (found := self.comparisons()) < before + 1 and time.monotonic() < deadline:
            time.sleep(SCRAPE_EVERY_S)
        return found

    def logs(self) -> str:
        return "".join(server.log_path.read_text() for server in self.servers.values() if server.log_path)

    def build_seconds(self, version: str) -> list[float]:
        """How long each process took to build and warm `version` of the default model, from the servers' logs."""
        return [float(seconds) for built, seconds in BUILT.findall(self.logs()) if built == version]

    def applied_at(self, generation: int) -> list[float]:
        """When each worker process applied `generation` of the default model (wall clock, ms), from the logs."""
        return [datetime.strptime(stamp, LOG_TIME).timestamp() for stamp, applied in APPLIED.findall(self.logs())
                if int(applied) == generation]

    def publish(self, store: Path, version: str) -> None:
        """Copy `version` of the session's store into the fleet's (atomic rename: no process sees it half-way)."""
        staging = self.model_dir / f".staging-{version}"
        shutil.copytree(store / MODEL_NAME / version, staging)
        staging.rename(self.model_dir / version)


@pytest.fixture(scope="module")
def fleet(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Both servers on a store holding default/v1 (v2 is published by the tests) and other/v1, no serving.json,
    polling serving.json every POLL_S."""
    from tests.small_artifacts import save_small_mmoe

    root = tmp_path_factory.mktemp("fleet_store")
    shutil.copytree(store / MODEL_NAME / "v1", root / MODEL_NAME / "v1")
    save_small_mmoe(root, OTHER, "v1", seed=11)
    env = {
        "RANKER_MODEL_STORE": str(root), "RANKER_MODEL_NAME": MODEL_NAME, "RANKER_MODELS": ",".join(MODELS),
        "RANKER_MODEL_VERSION": "v1", "RANKER_ADMIN_TOKEN": ADMIN_TOKEN,
        "RANKER_WARMUP_CANDIDATES": "[1, 16]", "RANKER_ANALYSIS_CANDIDATES": "100", "RANKER_TORCH_THREADS": "1",
        "RANKER_QUEUE_TIMEOUT_S": "30", "RANKER_CONFIG_POLL_S": str(POLL_S),
    }
    logs = tmp_path_factory.mktemp("fleet_logs")
    servers = {name: LiveServer(env, workers=workers, log_path=logs / f"{name}.log")
               for name, workers in WORKERS.items()}
    with ExitStack() as stack:
        for server in servers.values():
            stack.callback(server.stop)
        with ThreadPoolExecutor(len(servers)) as pool:  # start-ups overlap: each builds both models
            list(pool.map(LiveServer.__enter__, servers.values()))
        fleet = Fleet(root / MODEL_NAME, servers, {})
        yield Fleet(fleet.model_dir, servers, _worker_pids(fleet))


def _worker_pids(fleet: Fleet) -> dict[str, set[str]]:
    """Each server's worker pids, once every worker is ready (its config pollers started) and reports
    ranker_config_generation for both models. /readyz answers from the first ready worker: a sibling still
    warming up already reports its generation 0, yet polls nothing until it is ready (once 2.9 s after the first
    change was written, on a loaded box)."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    per_model: list[dict[str, set[str]]] = []
    while time.monotonic() < deadline:
        per_model = [{name: set(found) for name, found in fleet.generations(model).items()} for model in MODELS]
        pids = per_model[0]
        if (all(found == pids for found in per_model) and {name: len(found) for name, found in pids.items()} == WORKERS
                and _every_worker_ready(fleet)):
            return pids
        time.sleep(SCRAPE_EVERY_S)
    raise AssertionError(f"not every worker ready and reporting ranker_config_generation for {MODELS}: {per_model}; "
                         f"ready lines: {READY.findall(fleet.logs())}")


def _every_worker_ready(fleet: Fleet) -> bool:
    """Each server's log has one ready line per worker process and model."""
    for name, server in fleet.servers.items():
        ready = READY.findall(server.log_path.read_text())
        if any(ready.count(model) != WORKERS[name] for model in MODELS):
            return False
    return True


def ranker_config_set(model_dir: Path, *args: str) -> None:
    command = [sys.executable, "-m", "service.cli", "config", "set", "--store", str(model_dir.parent),
               "--name", model_dir.name, *args]
    done = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=WAIT_TIMEOUT_S)
    assert done.returncode == 0, done.stderr


# --- 1. three config changes ---


@dataclass(frozen=True)
class Answer:
    server: str
    user: str
    sent: float  # wall clock
    status: int  # -1: no HTTP answer
    generation: int
    variant: str
    version: str


class PerServerThreads:
    """One client thread per server of the fleet, from `with` to its end (then stopped and joined within
    `join_timeout_s`); a subclass's `_run(name)` is the thread's loop and returns when `_stop` is set."""

    join_timeout_s = WAIT_TIMEOUT_S

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(name,)) for name in fleet.servers]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.join_timeout_s)

    def _run(self, name: str) -> None:
        raise NotImplementedError


class ClosedLoopClient(PerServerThreads):
    """One thread per server, one request at a time (POST /rank: the default model) with THINK_S between them,
    each on a fresh connection (spread over the workers)."""

    def __init__(self, fleet: Fleet, schema) -> None:
        self.bodies = [(f"user-{i}", json.dumps(rank_body(schema, n=8, seed=i, user_id=f"user-{i}")).encode())
                       for i in range(USERS)]
        self.answers: list[Answer] = []
        super().__init__(fleet)

    def _run(self, name: str) -> None:
        url = f"{self.fleet.servers[name].url}/rank"
        for i in range(MAX_REQUESTS_PER_SERVER):
            if self._stop.wait(THINK_S if i else 0):
                return
            user, body = self.bodies[i % USERS]
            sent = time.time()
            try:
                response = httpx.post(url, content=body, headers=JSON, timeout=30)
            except httpx.HTTPError:
                self.answers.append(Answer(name, user, sent, -1, -1, "", ""))
                continue
            headers = response.headers
            self.answers.append(Answer(name, user, sent, response.status_code,
                                       int(headers.get("x-config-generation", -1)), headers.get("x-variant", ""),
                                       headers.get("x-model-version", "")))


@dataclass(frozen=True)
class Change:
    generation: int
    requested: float  # wall clock before the admin call or the command started: nothing new was served before
    written: float  # serving.json's mtime: its content was written (then fsynced and renamed into place)
    converged: float  # a scrape of /metrics after which every worker reported the generation
    expected: Callable[[Answer], bool]

    def took(self, fleet: Fleet) -> float:
        """From the file's content being written to the last worker process applying it (their log lines):
        an upper bound of the time from the file's appearance."""
        applied = fleet.applied_at(self.generation)
        assert len(applied) == sum(len(pids) for pids in fleet.pids.values()), applied
        return round(max(applied) - self.written, 3)


def written(model_dir: Path, generation: int) -> float:
    """serving.json's mtime, once it holds `generation` (the writer has returned: it is there)."""
    config = FleetConfigFile(model_dir).read()
    assert config is not None and config.generation == generation, config
    return (model_dir / "serving.json").stat().st_mtime


def test_three_config_changes_reach_every_worker_of_both_servers_with_no_failed_request(
    fleet: Fleet, store: Path, schema
) -> None:
    # From the fresh fleet: no serving.json (generation 0, the RANKER_* settings) and only v1 in the store.
    assert FleetConfigFile(fleet.model_dir).read() is None
    assert sorted(path.name for path in fleet.model_dir.iterdir() if path.is_dir()) == ["v1"]
    fleet.converge(0)
    changes: list[Change] = []
    arms = VariantRouter(Variant.UOI, {Variant(v): w for v, w in SPLIT.items()})
    with ClosedLoopClient(fleet, schema) as client:
        time.sleep(DWELL_S)
        # 1. variant switch: the admin endpoint of one server (it applies it at once, the others poll)
        requested = time.time()
        switched = httpx.post(f"{fleet.servers['single'].url}/admin/variant", json={"variant": "uoi"},
                              headers=ADMIN_HEADERS, timeout=30)
        assert switched.status_code == 200 and switched.json()["generation"] == 1, switched.text
        changes.append(Change(1, requested, written(fleet.model_dir, 1), fleet.converge(1),
                              lambda a: a.variant == "uoi" and a.version == "v1"))
        time.sleep(DWELL_S)
        # 2. A/B split: `ranker config set` (an operator without HTTP access)
        requested = time.time()
        ranker_config_set(fleet.model_dir, "--ab-split", json.dumps(SPLIT))
        changes.append(Change(2, requested, written(fleet.model_dir, 2), fleet.converge(2),
                              lambda a: a.variant == arms.route(a.user).value and a.version == "v1"))
        time.sleep(DWELL_S)
        # 3. a new model version: published into the store (atomic rename), then rolled out by config
        fleet.publish(store, "v2")
        requested = time.time()
        ranker_config_set(fleet.model_dir, "--version", "v2")
        changes.append(Change(3, requested, written(fleet.model_dir, 3), fleet.converge(3),
                              lambda a: a.variant == arms.route(a.user).value and a.version == "v2"))
        time.sleep(DWELL_S)
    answers = client.answers

    failed = [a for a in answers if a.status != 200]
    assert not failed, failed[:5]
    took = {change.generation: change.took(fleet) for change in changes}
    builds = fleet.build_seconds("v2")
    print(f"\nconvergence s per generation {took}; v2 build s per process {builds}; "
          f"answers {len(answers)}; worker pids {fleet.pids}")
    applied = {change.generation: [round(t - change.written, 3) for t in fleet.applied_at(change.generation)]
               for change in changes}  # per worker process: the failure message says which one was late
    assert took[1] <= 2 * POLL_S and took[2] <= 2 * POLL_S, applied
    assert len(builds) == 3 and took[3] <= 2 * POLL_S + max(builds), (applied, builds)
    ends = [change.requested for change in changes[1:]] + [float("inf")]
    for change, end in zip(changes, ends, strict=True):
        after = [a for a in answers if change.converged < a.sent < end]
        assert {a.server for a in after} == set(fleet.servers), change.generation  # both servers answered
        wrong = [a for a in after if a.generation != change.generation or not change.expected(a)]
        assert not wrong, (change.generation, wrong[:5])
    assert {a.generation for a in answers} == {0, 1, 2, 3}
    models = httpx.get(f"{fleet.servers['double'].url}/v1/models", timeout=10).json()
    assert models["config"]["generation"] == 3 and models["config"]["source"] == "file"
    assert models["version"] == "v2" and models["routing"]["ab_split"] == SPLIT


# --- 2. a bad generation ---


def test_a_bad_generation_is_refused_and_counted_by_every_worker_and_the_last_good_keeps_serving(
    fleet: Fleet, schema
) -> None:
    # From the last good generation, whichever it is (after test 1: 3).
    config_file = FleetConfigFile(fleet.model_dir)
    if config_file.read() is None:  # run alone: the first test has not written one
        httpx.post(f"{fleet.servers['single'].url}/admin/variant", json={"variant": "uoi"}, headers=ADMIN_HEADERS)
    good = config_file.read()
    assert good is not None
    fleet.converge(good.generation)
    corrupted = fleet.model_dir / "v1-corrupted"
    shutil.copytree(fleet.model_dir / "v1", corrupted)
    weights = corrupted / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    following = good.generation + 1
    fields = good.model_dump(mode="json")
    bad_files = [
        ("invalid", b'{"generation": %d, "variant": "mari", ' % following),
        ("invalid", json.dumps({**fields, "generation": following, "variant": "turbo"}).encode()),
        ("model", json.dumps({**fields, "generation": following, "version": "v9-missing"}).encode()),
        ("model", json.dumps({**fields, "generation": following, "version": "v1-corrupted"}).encode()),
    ]
    workers = sum(len(pids) for pids in fleet.pids.values())
    body = json.dumps(rank_body(schema, n=5)).encode()
    for reason, raw in bad_files:
        before = fleet.rejections(reason)
        temp = fleet.model_dir / ".serving.json.test"
        temp.write_bytes(raw)
        temp.replace(config_file.path)
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while fleet.rejections(reason) < before + workers and time.monotonic() < deadline:
            time.sleep(SCRAPE_EVERY_S)
        assert fleet.rejections(reason) == before + workers, (reason, raw[:80])
        for server in fleet.servers.values():
            for _ in range(3):
                answer = httpx.post(f"{server.url}/rank", content=body, headers=JSON, timeout=30)
                assert answer.status_code == 200 and answer.headers["x-config-generation"] == str(good.generation)
    refused = {reason: fleet.rejections(reason) for reason in ("invalid", "model")}
    time.sleep(3 * POLL_S)  # the same bad file is not retried on every poll
    assert {reason: fleet.rejections(reason) for reason in ("invalid", "model")} == refused
    last = httpx.get(f"{fleet.servers['single'].url}/v1/models", timeout=10).json()["config"]
    assert last["generation"] == good.generation and last["last_refusal"]["reason"] == "model"
    assert "sha256" in last["last_refusal"]["message"]
    with config_file.locked():  # the next good generation: every process applies it
        fixed = config_file.next_config({"variant": "vani", "version": good.version}, absent=good, invalid=good)
        config_file.write(fixed)
    fleet.converge(fixed.generation)


# --- 3. a version canary ---


@dataclass(frozen=True)
class ModelAnswer:
    server: str
    model: str
    status: int  # -1: no HTTP answer
    generation: int
    name: str  # X-Model-Name
    version: str  # X-Model-Version


class Background(PerServerThreads):
    """One thread per server, alternating the two models, one request at a time with THINK_S between them."""

    join_timeout_s = CANARY_WAIT_TIMEOUT_S

    def __init__(self, fleet: Fleet, schema) -> None:
        self.bodies = [json.dumps(rank_body(schema, n=8, seed=i, user_id=f"background-{i}")).encode()
                       for i in range(20)]
        self.answers: list[ModelAnswer] = []
        super().__init__(fleet)

    def _run(self, name: str) -> None:
        url = self.fleet.servers[name].url
        with httpx.Client(timeout=30) as http:
            for i in range(MAX_REQUESTS):
                if self._stop.wait(THINK_S if i else 0):
                    return
                model = MODELS[i % 2]
                self.answers.append(_post(http, name, f"{url}/rank/{model}", model, self.bodies[i % len(self.bodies)]))


def _post(http: httpx.Client, server: str, url: str, model: str, body: bytes) -> ModelAnswer:
    try:
        response = http.post(url, content=body, headers=JSON)
    except httpx.HTTPError:
        return ModelAnswer(server, model, -1, -1, "", "")
    headers = response.headers
    return ModelAnswer(server, model, response.status_code, int(headers.get("x-config-generation", -1)),
                       headers.get("x-model-name", ""), headers.get("x-model-version", ""))


def _rank_users(fleet: Fleet, schema, users: list[str], server: str) -> dict[str, ModelAnswer]:
    """Each user ranked once on `server` (POST /rank: the default model), two keep-alive clients at a time."""
    url = f"{fleet.servers[server].url}/rank"
    template = rank_body(schema, n=1, seed=0, user_id="x")

    def run(part: list[str]) -> dict[str, ModelAnswer]:
        with httpx.Client(timeout=30) as http:
            return {user: _post(http, server, url, MODEL_NAME, json.dumps({**template, "user_id": user}).encode())
                    for user in part}

    with ThreadPoolExecutor(2) as pool:
        parts = pool.map(run, [users[0::2], users[1::2]])
    return {user: answer for part in parts for user, answer in part.items()}


def test_a_canary_reaches_every_worker_splits_2000_users_and_rolls_back_with_no_failed_request(
    fleet: Fleet, store: Path, schema
) -> None:
    # From whatever generation g0 the default model is at (after tests 1 and 2: v2 with an A/B split; run alone:
    # no serving.json, 0): v1 for everyone, one variant (auto), no split, at g0 + 1 before any traffic.
    if not (fleet.model_dir / "v2").exists():  # run alone: test 1 has not published it
        fleet.publish(store, "v2")
    current = FleetConfigFile(fleet.model_dir).read()
    g0 = 0 if current is None else current.generation
    fleet.converge(g0, timeout_s=CANARY_WAIT_TIMEOUT_S)
    fleet.converge(0, OTHER, CANARY_WAIT_TIMEOUT_S)  # no serving.json: its RANKER_* settings
    ranker_config_set(fleet.model_dir, "--version", "v1", "--variant", "auto", "--ab-split", "{}")
    fleet.converge(g0 + 1, timeout_s=CANARY_WAIT_TIMEOUT_S)
    compared_before = fleet.comparisons()  # cumulative since start-up: this test's are the difference
    users = [f"user-{i}" for i in range(SPLIT_USERS)]
    with Background(fleet, schema) as background:
        ranker_config_set(fleet.model_dir, "--canary", f"v2={CANARY_WEIGHT}", "--compare-sample-rate",
                          str(COMPARE_SAMPLE_RATE), "--compare-top-k", "5")
        fleet.converge(g0 + 2, timeout_s=CANARY_WAIT_TIMEOUT_S)
        half = SPLIT_USERS // 2
        split = {**_rank_users(fleet, schema, users[:half], "single"),
                 **_rank_users(fleet, schema, users[half:], "double")}
        again = _rank_users(fleet, schema, users[:BOTH_SERVERS_USERS], "double")
        compared = fleet.wait_for_comparisons(compared_before) - compared_before
        described = httpx.get(f"{fleet.servers['single'].url}/v1/models", timeout=10).json()["versions"]
        ranker_config_set(fleet.model_dir, "--rollback")
        fleet.converge(g0 + 3, timeout_s=CANARY_WAIT_TIMEOUT_S)
        after = _rank_users(fleet, schema, users[:100], "single") | _rank_users(fleet, schema, users[100:200],
                                                                                "double")
        fleet.converge(0, OTHER, CANARY_WAIT_TIMEOUT_S)  # the other model's config never moved
    answered = [*split.values(), *again.values(), *after.values(), *background.answers]
    assert [a for a in answered if a.status != 200] == []  # zero failed requests, fleet-wide

    router = VersionRouter("v1", {"v1": 1 - CANARY_WEIGHT, "v2": CANARY_WEIGHT})
    assert {a.generation for a in split.values()} == {g0 + 2}
    wrong = {user: a.version for user, a in split.items() if a.version != router.route(user)}
    assert wrong == {}  # every user on the version its hash picks, on either server and any worker
    assert {user: a.version for user, a in again.items()} == {user: split[user].version for user in again}
    on_canary = sum(a.version == "v2" for a in split.values())
    expected = SPLIT_USERS * CANARY_WEIGHT
    spread = SIGMAS * math.sqrt(SPLIT_USERS * CANARY_WEIGHT * (1 - CANARY_WEIGHT))
    assert abs(on_canary - expected) <= spread, (on_canary, expected, spread)

    assert compared >= 1  # versions compared on live traffic (about 110 expected; none at all: a broken sampler)
    assert set(described["serving"]) == {"v1", "v2"} and described["serving"]["v2"]["labels"] == ["canary"]

    assert {(a.generation, a.version) for a in after.values()} == {(g0 + 3, "v1")}  # rolled back: one version
    other = [a for a in background.answers if a.model == OTHER]
    assert other and {(a.name, a.version, a.generation) for a in other} == {(OTHER, "v1", 0)}
    default = [a for a in background.answers if a.model == MODEL_NAME]
    assert {a.name for a in default} == {MODEL_NAME} and {a.version for a in default} <= {"v1", "v2"}


# --- 4. no fleet: start-up refused ---


def test_ranker_serve_refuses_to_start_on_an_unusable_fleet_config(store: Path, tmp_path: Path) -> None:
    from service.api.server import _check_model_exists
    from service.serving.settings import Settings

    shutil.copytree(store / MODEL_NAME / "v1", tmp_path / MODEL_NAME / "v1")
    settings = Settings(model_store=tmp_path, model_name=MODEL_NAME)
    _check_model_exists(settings)  # no serving.json: the RANKER_* settings
    for raw, message in (('{"generation": 1', "not valid JSON"), (json.dumps(
            {"generation": 1, "version": "v7", "variant": "mari", "ab_split": {},
             "shadow": {"variant": None, "sample_rate": 0}}), "v7")):
        (tmp_path / MODEL_NAME / "serving.json").write_text(raw)
        with pytest.raises(SystemExit, match=message):
            _check_model_exists(settings)
