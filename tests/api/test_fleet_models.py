"""Several models and a version canary across a fleet, for real (issue 19 item 4): two `ranker serve` processes
(one with 2 uvicorn workers) on one store serve two models; `ranker config set --canary` on one model reaches
every worker of both servers, 2,000 users split over the two versions as the version hash says (each user on the
same version on both servers, the canary's share within binomial tolerance), `--rollback` converges back to one
version, sampled requests are compared on the other version (metrics, /v1/models), the other model is never
touched, and a closed-loop client on both servers and both models sees zero failed requests throughout."""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.serving.routing import VersionRouter
from tests.api.conftest import MODEL_NAME, rank_body
from tests.api.live_server import LiveServer
from tests.api.metrics_text import parse_metrics, total
from tests.api.test_fleet_config import ranker_config_set

OTHER = "other"  # the second model: trained apart, never given a canary
POLL_S = 0.5
WAIT_TIMEOUT_S = 120.0  # bound of every wait (three processes build v2 on a shared 2-core box)
SCRAPE_EVERY_S = 0.1
THINK_S = 0.05  # the background client's pace: correctness while configs change, not load
MAX_REQUESTS = 5_000
SPLIT_USERS = 2_000  # distinct users ranked once each while the canary holds
BOTH_SERVERS_USERS = 200  # of them, also ranked on the other server: one version per user, fleet-wide
CANARY_WEIGHT = 0.2
COMPARE_SAMPLE_RATE = 0.05  # of ~2,200 canary-time requests: ~110 compared on the other version
SIGMAS = 5.0  # tolerance of the canary's share: a correct split fails it about once in 3.5 million runs
JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class Answer:
    server: str
    model: str
    status: int  # -1: no HTTP answer
    generation: int
    name: str  # X-Model-Name
    version: str  # X-Model-Version


@dataclass
class Fleet:
    servers: dict[str, LiveServer]  # "single" (1 worker), "double" (2 workers)
    model_dir: Path  # the model the canary is set on

    def generations(self, model: str) -> list[float]:
        """ranker_config_generation of `model` in every worker process of every server (fresh connections)."""
        found: list[float] = []
        for server in self.servers.values():
            samples = parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text)
            found += [value for (metric, labels), value in samples.items()
                      if metric == "ranker_config_generation" and dict(labels).get("model") == model]
        return found

    def comparisons(self) -> float:
        """Comparisons of the canaried model's v1 against v2 (the top-k overlap histogram's count), both servers."""
        return sum(total(parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text),
                         "ranker_version_topk_overlap_count", model=MODEL_NAME, primary_version="v1",
                         other_version="v2") for server in self.servers.values())

    def wait_for_comparisons(self) -> float:
        """The comparisons made once at least one is recorded (they run on a background thread)."""
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while (found := self.comparisons()) < 1 and time.monotonic() < deadline:
            time.sleep(SCRAPE_EVERY_S)
        return found

    def converge(self, model: str, generation: int, workers: int) -> None:
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        seen: list[float] = []
        while time.monotonic() < deadline:
            seen = self.generations(model)
            if len(seen) == workers and all(value == generation for value in seen):
                return
            time.sleep(SCRAPE_EVERY_S)
        raise AssertionError(f"{model}: generation {generation} not applied by {workers} workers: {seen}")


@pytest.fixture(scope="module")
def fleet(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from tests.small_artifacts import save_small_mmoe

    root = tmp_path_factory.mktemp("fleet_models")
    for version in ("v1", "v2"):
        shutil.copytree(store / MODEL_NAME / version, root / MODEL_NAME / version)
    save_small_mmoe(root, OTHER, "v1", seed=11)
    model_dir = root / MODEL_NAME
    ranker_config_set(model_dir, "--version", "v1")  # generation 1: v1 for everyone, before any server starts
    env = {"RANKER_MODEL_STORE": str(root), "RANKER_MODEL_NAME": MODEL_NAME, "RANKER_MODELS": f"{MODEL_NAME},{OTHER}",
           "RANKER_WARMUP_CANDIDATES": "[1, 16]", "RANKER_ANALYSIS_CANDIDATES": "100", "RANKER_TORCH_THREADS": "1",
           "RANKER_QUEUE_TIMEOUT_S": "30", "RANKER_CONFIG_POLL_S": str(POLL_S)}
    logs = tmp_path_factory.mktemp("fleet_models_logs")
    servers = {"single": LiveServer(env, workers=1, log_path=logs / "single.log"),
               "double": LiveServer(env, workers=2, log_path=logs / "double.log")}
    with ExitStack() as stack:
        for server in servers.values():
            stack.callback(server.stop)
        with ThreadPoolExecutor(len(servers)) as pool:  # start-ups overlap: each builds both models
            list(pool.map(LiveServer.__enter__, servers.values()))
        yield Fleet(servers, model_dir)


class Background:
    """One thread per server, alternating the two models, one request at a time with THINK_S between them."""

    def __init__(self, fleet: Fleet, schema) -> None:
        self.fleet = fleet
        self.bodies = [json.dumps(rank_body(schema, n=8, seed=i, user_id=f"background-{i}")).encode()
                       for i in range(20)]
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(name,)) for name in fleet.servers]

    def __enter__(self) -> Background:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT_TIMEOUT_S)

    def _run(self, name: str) -> None:
        url = self.fleet.servers[name].url
        with httpx.Client(timeout=30) as http:
            for i in range(MAX_REQUESTS):
                if self._stop.wait(THINK_S if i else 0):
                    return
                model = (MODEL_NAME, OTHER)[i % 2]
                self.answers.append(_post(http, name, f"{url}/rank/{model}", model, self.bodies[i % len(self.bodies)]))


def _post(http: httpx.Client, server: str, url: str, model: str, body: bytes) -> Answer:
    try:
        response = http.post(url, content=body, headers=JSON)
    except httpx.HTTPError:
        return Answer(server, model, -1, -1, "", "")
    headers = response.headers
    return Answer(server, model, response.status_code, int(headers.get("x-config-generation", -1)),
                  headers.get("x-model-name", ""), headers.get("x-model-version", ""))


def _rank_users(fleet: Fleet, schema, users: list[str], server: str) -> dict[str, Answer]:
    """Each user ranked once on `server` (POST /rank: the default model), two keep-alive clients at a time."""
    url = f"{fleet.servers[server].url}/rank"
    template = rank_body(schema, n=1, seed=0, user_id="x")

    def run(part: list[str]) -> dict[str, Answer]:
        with httpx.Client(timeout=30) as http:
            return {user: _post(http, server, url, MODEL_NAME, json.dumps({**template, "user_id": user}).encode())
                    for user in part}

    with ThreadPoolExecutor(2) as pool:
        parts = pool.map(run, [users[0::2], users[1::2]])
    return {user: answer for part in parts for user, answer in part.items()}


def test_a_canary_reaches_every_worker_splits_2000_users_and_rolls_back_with_no_failed_request(
    fleet: Fleet, schema
) -> None:
    workers = 3  # 1 + 2 processes
    fleet.converge(MODEL_NAME, 1, workers)
    fleet.converge(OTHER, 0, workers)  # no serving.json: its RANKER_* settings
    users = [f"user-{i}" for i in range(SPLIT_USERS)]
    with Background(fleet, schema) as background:
        ranker_config_set(fleet.model_dir, "--canary", f"v2={CANARY_WEIGHT}", "--compare-sample-rate",
                          str(COMPARE_SAMPLE_RATE), "--compare-top-k", "5")
        fleet.converge(MODEL_NAME, 2, workers)
        half = SPLIT_USERS // 2
        split = {**_rank_users(fleet, schema, users[:half], "single"),
                 **_rank_users(fleet, schema, users[half:], "double")}
        again = _rank_users(fleet, schema, users[:BOTH_SERVERS_USERS], "double")
        compared = fleet.wait_for_comparisons()
        described = httpx.get(f"{fleet.servers['single'].url}/v1/models", timeout=10).json()["versions"]
        ranker_config_set(fleet.model_dir, "--rollback")
        fleet.converge(MODEL_NAME, 3, workers)
        after = _rank_users(fleet, schema, users[:100], "single") | _rank_users(fleet, schema, users[100:200],
                                                                                "double")
        fleet.converge(OTHER, 0, workers)  # the other model's config never moved
    answered = [*split.values(), *again.values(), *after.values(), *background.answers]
    assert [a for a in answered if a.status != 200] == []  # zero failed requests, fleet-wide

    router = VersionRouter("v1", {"v1": 1 - CANARY_WEIGHT, "v2": CANARY_WEIGHT})
    assert {a.generation for a in split.values()} == {2}
    wrong = {user: a.version for user, a in split.items() if a.version != router.route(user)}
    assert wrong == {}  # every user on the version its hash picks, on either server and any worker
    assert {user: a.version for user, a in again.items()} == {user: split[user].version for user in again}
    on_canary = sum(a.version == "v2" for a in split.values())
    expected = SPLIT_USERS * CANARY_WEIGHT
    spread = SIGMAS * math.sqrt(SPLIT_USERS * CANARY_WEIGHT * (1 - CANARY_WEIGHT))
    assert abs(on_canary - expected) <= spread, (on_canary, expected, spread)

    assert compared >= 1  # versions compared on live traffic (about 110 expected; none at all: a broken sampler)
    assert set(described["serving"]) == {"v1", "v2"} and described["serving"]["v2"]["labels"] == ["canary"]

    assert {(a.generation, a.version) for a in after.values()} == {(3, "v1")}  # rolled back: one version
    other = [a for a in background.answers if a.model == OTHER]
    assert other and {(a.name, a.version, a.generation) for a in other} == {(OTHER, "v1", 0)}
    default = [a for a in background.answers if a.model == MODEL_NAME]
    assert {a.name for a in default} == {MODEL_NAME} and {a.version for a in default} <= {"v1", "v2"}
