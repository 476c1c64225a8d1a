"""Fleet-wide fleet config, for real: two `ranker serve` processes on one store (one of them with 2 uvicorn
workers) follow model_store/<name>/serving.json while a closed-loop client keeps ranking on both."""

from __future__ import annotations

import json
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

import httpx
import pytest

from service.engine import Variant
from service.serving.fleet_config import FleetConfigFile
from service.serving.routing import VariantRouter
from tests.api.conftest import ADMIN_HEADERS, ADMIN_TOKEN, MODEL_NAME, rank_body
from tests.api.live_server import REPO_ROOT, LiveServer
from tests.api.metrics_text import parse_metrics, total

POLL_S = 1.0  # two intervals (2 s) leave margin on a loaded 2-core box (0.5 s once took 1.12 s)
WAIT_TIMEOUT_S = 60.0  # bound of every wait for the fleet
SCRAPE_EVERY_S = 0.05
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
APPLIED = re.compile(r"^(\S+ \S+) INFO service.serving.config_watch: fleet config generation (\d+) applied", re.M)
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"  # logging's asctime, local time


@dataclass
class Fleet:
    model_dir: Path
    servers: dict[str, LiveServer]  # "single" (1 worker) and "double" (2 workers)
    pids: dict[str, set[str]]  # worker pids per server, from ranker_config_generation

    def generations(self) -> dict[str, dict[str, float]]:
        """ranker_config_generation per server and worker pid (fresh connections: any worker answers)."""
        found = {}
        for name, server in self.servers.items():
            samples = parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text)
            found[name] = {dict(labels)["pid"]: value for (metric, labels), value in samples.items()
                           if metric == "ranker_config_generation"}
        return found

    def converge(self, generation: int) -> float:
        """Wait until every worker of every server applies `generation`; the wall-clock time it did."""
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while time.monotonic() < deadline:
            seen = self.generations()
            assert {name: set(pids) for name, pids in seen.items()} == self.pids, seen  # no worker restarted
            if all(value == generation for pids in seen.values() for value in pids.values()):
                return time.time()
            time.sleep(SCRAPE_EVERY_S)
        raise AssertionError(f"generation {generation} not applied everywhere in {WAIT_TIMEOUT_S}s: {seen}")

    def rejections(self, reason: str) -> float:
        return sum(total(parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text),
                         "ranker_config_rejections_total", reason=reason) for server in self.servers.values())

    def logs(self) -> str:
        return "".join(server.log_path.read_text() for server in self.servers.values() if server.log_path)

    def build_seconds(self, version: str) -> list[float]:
        """How long each process took to build and warm `version`, from the servers' logs."""
        return [float(seconds) for built, seconds in BUILT.findall(self.logs()) if built == version]

    def applied_at(self, generation: int) -> list[float]:
        """When each worker process applied `generation` (wall clock, ms), from the servers' logs."""
        return [datetime.strptime(stamp, LOG_TIME).timestamp() for stamp, applied in APPLIED.findall(self.logs())
                if int(applied) == generation]


@pytest.fixture(scope="module")
def fleet(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Both servers on a store holding only v1, polling serving.json every POLL_S."""
    root = tmp_path_factory.mktemp("fleet_store")
    shutil.copytree(store / MODEL_NAME / "v1", root / MODEL_NAME / "v1")
    env = {
        "RANKER_MODEL_STORE": str(root), "RANKER_MODEL_VERSION": "v1", "RANKER_ADMIN_TOKEN": ADMIN_TOKEN,
        "RANKER_WARMUP_CANDIDATES": "[1, 16]", "RANKER_ANALYSIS_CANDIDATES": "100", "RANKER_TORCH_THREADS": "1",
        "RANKER_QUEUE_TIMEOUT_S": "30", "RANKER_CONFIG_POLL_S": str(POLL_S),
    }
    logs = tmp_path_factory.mktemp("fleet_logs")
    servers = {"single": LiveServer(env, workers=1, log_path=logs / "single.log"),
               "double": LiveServer(env, workers=2, log_path=logs / "double.log")}
    with ExitStack() as stack:
        for server in servers.values():
            stack.callback(server.stop)
        with ThreadPoolExecutor(len(servers)) as pool:  # start-ups overlap: each builds the model
            list(pool.map(LiveServer.__enter__, servers.values()))
        fleet = Fleet(root / MODEL_NAME, servers, {})
        yield Fleet(fleet.model_dir, servers, _worker_pids(fleet, {"single": 1, "double": 2}))


def _worker_pids(fleet: Fleet, workers: dict[str, int]) -> dict[str, set[str]]:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while time.monotonic() < deadline:
        pids = {name: set(found) for name, found in fleet.generations().items()}
        if {name: len(found) for name, found in pids.items()} == workers:
            return pids
        time.sleep(SCRAPE_EVERY_S)
    raise AssertionError(f"not every worker reported ranker_config_generation: {pids}")


@dataclass(frozen=True)
class Answer:
    server: str
    user: str
    sent: float  # wall clock
    status: int  # -1: no HTTP answer
    generation: int
    variant: str
    version: str


class ClosedLoopClient:
    """One thread per server, one request at a time with THINK_S between them, each on a fresh connection (spread
    over the workers)."""

    def __init__(self, fleet: Fleet, schema) -> None:
        self.fleet = fleet
        self.bodies = [(f"user-{i}", json.dumps(rank_body(schema, n=8, seed=i, user_id=f"user-{i}")).encode())
                       for i in range(USERS)]
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(name,)) for name in fleet.servers]

    def __enter__(self) -> ClosedLoopClient:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT_TIMEOUT_S)

    def _run(self, name: str) -> None:
        url = f"{self.fleet.servers[name].url}/rank"
        for i in range(MAX_REQUESTS_PER_SERVER):
            if self._stop.wait(THINK_S if i else 0):
                return
            user, body = self.bodies[i % USERS]
            sent = time.time()
            try:
                response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
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


def ranker_config_set(model_dir: Path, *args: str) -> None:
    command = [sys.executable, "-m", "service.cli", "config", "set", "--store", str(model_dir.parent),
               "--name", model_dir.name, *args]
    done = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=WAIT_TIMEOUT_S)
    assert done.returncode == 0, done.stderr


def test_three_config_changes_reach_every_worker_of_both_servers_with_no_failed_request(
    fleet: Fleet, store: Path, schema
) -> None:
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
        staging = fleet.model_dir / ".staging-v2"
        shutil.copytree(store / MODEL_NAME / "v2", staging)
        staging.rename(fleet.model_dir / "v2")
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


def test_a_bad_generation_is_refused_and_counted_by_every_worker_and_the_last_good_keeps_serving(
    fleet: Fleet, schema
) -> None:
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
                answer = httpx.post(f"{server.url}/rank", content=body, headers={"content-type": "application/json"},
                                    timeout=30)
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
