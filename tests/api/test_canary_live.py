"""A version canary for real: a `ranker serve` process follows `ranker config set --canary`, splits users over
v1 and v2, compares them on live traffic (/metrics, /v1/models), and `--rollback` brings it back to v1, while a
closed-loop client ranks throughout without one failed request."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.serving.routing import VersionRouter
from tests.api.conftest import MODEL_NAME, rank_body
from tests.api.live_server import LiveServer
from tests.api.metrics_text import parse_metrics, total
from tests.api.test_fleet_config import ranker_config_set

POLL_S = 0.5
WAIT_TIMEOUT_S = 90.0  # bound of every wait (a 2-core box shared with other suites builds v2 slowly)
SCRAPE_EVERY_S = 0.1
THINK_S = 0.05  # the client's pace: the test is about correctness while the config changes, not load
MAX_REQUESTS = 5_000
USERS = 40
CANARY_WEIGHT = 0.5


@dataclass(frozen=True)
class Answer:
    user: str
    status: int  # -1: no HTTP answer
    generation: int
    version: str


class Client:
    """One thread ranking one request at a time, cycling over USERS users, until stopped."""

    def __init__(self, url: str, schema) -> None:
        self.url = url
        self.bodies = [(user, json.dumps(rank_body(schema, n=16, seed=i, user_id=user)).encode())
                       for i, user in enumerate(uuid.uuid4().hex for _ in range(USERS))]
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Client:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(WAIT_TIMEOUT_S)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            for i in range(MAX_REQUESTS):
                if self._stop.wait(THINK_S if i else 0):
                    return
                user, body = self.bodies[i % USERS]
                try:
                    response = http.post(f"{self.url}/rank", content=body, headers={"content-type": "application/json"})
                except httpx.HTTPError:
                    self.answers.append(Answer(user, -1, -1, ""))
                    continue
                self.answers.append(Answer(user, response.status_code, int(response.headers.get("x-config-generation",
                                                                                                 -1)),
                                           response.headers.get("x-model-version", "")))

    def since(self, generation: int) -> list[Answer]:
        return [answer for answer in list(self.answers) if answer.generation == generation]


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    root = tmp_path_factory.mktemp("canary_store")
    for version in ("v1", "v2"):
        shutil.copytree(store / MODEL_NAME / version, root / MODEL_NAME / version)
    env = {"RANKER_MODEL_STORE": str(root), "RANKER_MODEL_VERSION": "v1", "RANKER_WARMUP_CANDIDATES": "[1, 16]",
           "RANKER_ANALYSIS_CANDIDATES": "100", "RANKER_TORCH_THREADS": "1", "RANKER_QUEUE_TIMEOUT_S": "30",
           "RANKER_CONFIG_POLL_S": str(POLL_S)}
    with LiveServer(env, workers=1) as live:
        yield live, root / MODEL_NAME


def metrics(live: LiveServer) -> dict:
    return parse_metrics(httpx.get(f"{live.url}/metrics", timeout=10).text)


def wait_for(what: str, check) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(SCRAPE_EVERY_S)
    raise AssertionError(f"{what}: not within {WAIT_TIMEOUT_S}s")


def test_a_canary_is_applied_split_by_user_compared_and_rolled_back_with_no_failed_request(
    server: tuple[LiveServer, Path], schema
) -> None:
    live, model_dir = server
    with Client(live.url, schema) as client:
        ranker_config_set(model_dir, "--version", "v1", "--canary", f"v2={CANARY_WEIGHT}", "--compare-sample-rate", "1",
                          "--compare-top-k", "5")
        wait_for("generation 1 applied", lambda: total(metrics(live), "ranker_config_generation") == 1)
        wait_for("every user answered on generation 1", lambda: {a.user for a in client.since(1)} >= {
            user for user, _ in client.bodies})
        wait_for("comparisons recorded", lambda: total(metrics(live), "ranker_version_comparisons_total") >= 10)
        described = httpx.get(f"{live.url}/v1/models", timeout=10).json()["versions"]
        ranker_config_set(model_dir, "--rollback")
        wait_for("generation 2 applied", lambda: total(metrics(live), "ranker_config_generation") == 2)
        wait_for("answers on generation 2", lambda: len(client.since(2)) >= 10)
    router = VersionRouter("v1", {"v1": 1 - CANARY_WEIGHT, "v2": CANARY_WEIGHT})
    canary = client.since(1)
    assert all(answer.version == router.route(answer.user) for answer in canary)  # each user on its version
    assert {answer.version for answer in canary} == {"v1", "v2"}  # 40 users at 50/50
    assert {answer.version for answer in client.since(2)} == {"v1"}  # rolled back: one version
    assert [answer for answer in client.answers if answer.status != 200] == []  # zero failed requests
    assert set(described["serving"]) == {"v1", "v2"} and described["serving"]["v2"]["labels"] == ["canary"]
    assert described["compare"]["summary"]["v1 vs v2"]["count"] >= 10
    samples = metrics(live)
    assert total(samples, "ranker_version_topk_overlap_count", primary_version="v1", other_version="v2") >= 10
    assert total(samples, "ranker_version_score_abs_difference_count") >= 10
    assert total(samples, "ranker_config_rejections_total") == 0
