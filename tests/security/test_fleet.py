"""The fleet stays up and consistent when its shared state goes bad (issue 21, item 3), on a real server.

One `ranker serve --workers 2` (tests/api/live_server.py) on a private store holding v1, started on a
serving.json that says `version: null`; the tests run in order and break what the workers share: a newer
folder published (then a worker killed), a FIFO in place of serving.json, the served version's folder deleted
(then a worker killed), and last SIGTERM with a FIFO in place. Waits poll with deadlines; nothing depends on
how fast the machine is.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.api.supervisor import START_RETRY_MAX_S, start_retry_delay
from service.engine import Variant
from service.serving.fleet_config import (
    MAX_FILE_BYTES,
    FleetConfig,
    FleetConfigFile,
    FleetConfigUnusable,
)
from service.serving.fleet_state import FLEET_DIR_ENV
from tests.api.conftest import ADMIN_HEADERS, rank_body
from tests.api.live_server import LiveServer
from tests.api.metrics_text import total
from tests.conftest import SMALL_MODEL_NAME
from tests.faults.conftest import fault_env, store_with
from tests.faults.traffic import scrape, worker_pids
from tests.serving.test_fleet_config_file import make_watcher

WORKERS = 2
REQUEST_TIMEOUT_S = 15.0  # one small request; an admin call that hangs fails here, not at the suite's timeout
# a respawned worker imports torch, fails at start-up, and is started again 1 s later (a wait: minutes at worst
# while other tests load the machine)
RETRIED_WITHIN_S = 120.0
APPLIED_WITHIN_S = 15.0  # a config change reaches every worker (poll 1 s; no model build involved)
REFUSED_WITHIN_S = 10.0  # every worker refuses the FIFO (poll 1 s)
EXIT_WITHIN_S = 15.0  # SIGTERM with no drain delay and nothing in flight
NOT_A_FILE = "not a regular file"  # the refusal's log line
GENERATION_1 = {"generation": 1, "variant": "mari", "ab_split": {}, "shadow": {"variant": None, "sample_rate": 0.0}}


@pytest.fixture(scope="module")
def body(schema) -> bytes:
    return json.dumps(rank_body(schema, n=20)).encode()


@pytest.fixture(scope="module")
def model_dir(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = store_with(store, tmp_path_factory.mktemp("fleet_store"), ("v1",))
    (root / SMALL_MODEL_NAME / "serving.json").write_text(json.dumps({**GENERATION_1, "version": None}))  # by hand
    return root / SMALL_MODEL_NAME


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fleet_logs") / "server.log"


@pytest.fixture(scope="module")
def server(model_dir: Path, log: Path) -> Iterator[LiveServer]:
    with LiveServer(fault_env(model_dir.parent), workers=WORKERS, log_path=log) as live:
        worker_pids(live.url, WORKERS)
        yield live


def rank(url: str, body: bytes) -> tuple[str, str | None, str | None]:
    """(status or transport error, X-Model-Version, X-Config-Generation) of one request on a fresh connection."""
    try:
        response = httpx.post(f"{url}/rank", content=body, headers={"content-type": "application/json"},
                              timeout=REQUEST_TIMEOUT_S)
    except httpx.TransportError as exc:
        return type(exc).__name__, None, None
    return str(response.status_code), response.headers.get("x-model-version"), response.headers.get(
        "x-config-generation")


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, server: LiveServer) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s:g} s: {what}; log: {server.log()}")
        time.sleep(0.2)


def log_count(log: Path, text: str) -> int:
    return log.read_text(errors="replace").count(text) if log.exists() else 0


def put_fifo(model_dir: Path) -> None:
    """A FIFO in place of serving.json (renamed over it): a reader that open()s it blocks until a writer comes."""
    fifo = model_dir / ".serving.json.fifo"
    os.mkfifo(fifo)
    os.replace(fifo, model_dir / "serving.json")


def generations(url: str) -> set[float]:
    """The config generation of every live worker (one ranker_config_generation series per pid)."""
    return {value for (name, _), value in scrape(url).items() if name == "ranker_config_generation"}


def test_a_null_version_is_one_version_in_every_worker_even_after_a_newer_folder_appears(
    server: LiveServer, model_dir: Path, store: Path, body: bytes
) -> None:
    victim = sorted(worker_pids(server.url, WORKERS))[0]
    store_with(store, model_dir.parent, ("v2",))  # published while serving: the latest folder now
    os.kill(int(victim), signal.SIGKILL)
    worker_pids(server.url, WORKERS, excluded={victim})  # its replacement has applied generation 1
    answers = Counter(rank(server.url, body) for _ in range(40))
    samples = scrape(server.url)
    assert set(answers) == {("200", "v1", "1")}, answers
    # ranker_model_info is 1 for a version some live worker serves (max over workers): no worker serves v2
    assert total(samples, "ranker_model_info", version="v1") == 1
    assert total(samples, "ranker_model_info", version="v2") == 0


def test_a_fifo_in_place_of_serving_json_is_refused_once_and_blocks_no_later_change(
    server: LiveServer, model_dir: Path, log: Path, body: bytes
) -> None:
    def refused_by_every_worker(before: int) -> None:
        wait_until(lambda: log_count(log, NOT_A_FILE) >= before + WORKERS, REFUSED_WITHIN_S,
                   "every worker refuses the FIFO", server)

    put_fifo(model_dir)
    refused_by_every_worker(0)
    assert rank(server.url, body) == ("200", "v1", "1")
    FleetConfigFile(model_dir).write(FleetConfig.model_validate({**GENERATION_1, "generation": 2,
                                                                     "version": "v1", "variant": "uoi"}))
    wait_until(lambda: generations(server.url) == {2.0}, APPLIED_WITHIN_S, "generation 2 applied", server)

    put_fifo(model_dir)
    refused_by_every_worker(WORKERS)
    switched = httpx.post(f"{server.url}/admin/variant", json={"variant": "vani"}, headers=ADMIN_HEADERS,
                          timeout=REQUEST_TIMEOUT_S)
    assert switched.status_code == 200 and switched.json()["generation"] == 3, switched.text
    assert (model_dir / "serving.json").is_file()  # the admin write replaced the FIFO
    wait_until(lambda: generations(server.url) == {3.0}, APPLIED_WITHIN_S, "generation 3 applied", server)
    time.sleep(2.0)  # two more polls of each worker: a refused FIFO is not logged again on every poll
    assert log_count(log, NOT_A_FILE) == 2 * WORKERS, server.log()


def test_a_replacement_that_cannot_start_is_retried_while_its_sibling_keeps_serving(
    server: LiveServer, model_dir: Path, log: Path, body: bytes
) -> None:
    assert server.process is not None
    victim = sorted(worker_pids(server.url, WORKERS))[0]
    served = rank(server.url, body)  # ("200", "v1", its generation)
    assert served[:2] == ("200", "v1"), served
    shutil.rmtree(model_dir / "v1")  # the fleet serves it from memory; no new worker can load it
    os.kill(int(victim), signal.SIGKILL)
    answers: Counter[tuple[str, str | None, str | None]] = Counter()
    started = log_count(log, "Started server process")
    deadline = time.monotonic() + RETRIED_WITHIN_S
    # throughout: the sibling answers, as before, until the failed replacement is started once more
    while not (log_count(log, "failed at start-up") and log_count(log, "Started server process") > started + 1):
        answers[rank(server.url, body)] += 1
        assert server.process.poll() is None, server.log()
        time.sleep(0.05)  # a client's pace, leaving the cores to the starting worker
        if time.monotonic() > deadline:
            pytest.fail(f"no failed start-up and retry within {RETRIED_WITHIN_S:g} s; log: {server.log()}")
    assert answers and set(answers) == {served}, answers
    text = log.read_text(errors="replace")
    assert "cannot start" in text and "no such model or version folder" in text, server.log()  # the worker's why
    assert "failure 1 in a row); 1 other worker(s) keep serving; next start in 1 s" in text, server.log()
    assert [start_retry_delay(failures) for failures in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]  # bounded
    assert START_RETRY_MAX_S == 30


def test_sigterm_with_a_fifo_in_place_and_a_worker_backing_off_stops_promptly(
    server: LiveServer, model_dir: Path, log: Path, body: bytes
) -> None:
    assert server.process is not None
    refusals = log_count(log, NOT_A_FILE)
    put_fifo(model_dir)
    wait_until(lambda: log_count(log, NOT_A_FILE) > refusals, REFUSED_WITHIN_S, "the FIFO refused", server)
    assert rank(server.url, body)[:2] == ("200", "v1")
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(EXIT_WITHIN_S)
    except Exception:
        pytest.fail(f"no exit within {EXIT_WITHIN_S:g} s of SIGTERM; log: {server.log()}")
    assert server.process.returncode in (0, -signal.SIGTERM), server.log()


# --- the pieces, without a server ----------------------------------------------------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _symlink_to_fifo(path: Path) -> None:
    os.mkfifo(path.with_name("elsewhere"))
    path.symlink_to(path.with_name("elsewhere"))


def _symlink_to_a_good_file(path: Path) -> None:
    good = path.with_name("elsewhere.json")
    good.write_text(json.dumps({**GENERATION_1, "version": "v1"}))
    path.symlink_to(good)


def _too_large(path: Path) -> None:
    path.write_text(json.dumps({**GENERATION_1, "version": "v1"}) + " " * MAX_FILE_BYTES)


@pytest.mark.parametrize("make", [_fifo, _symlink_to_fifo, _symlink_to_a_good_file, _too_large],
                         ids=["fifo", "symlink to a fifo", "symlink to a regular file", "over the size bound"])
def test_the_serving_json_reader_refuses_all_but_a_bounded_regular_file_without_blocking(
    tmp_path: Path, make: Callable[[Path], None]
) -> None:
    config_file = FleetConfigFile(tmp_path)
    make(config_file.path)
    outcome: list[object] = []
    reader = threading.Thread(target=lambda: outcome.append(_read_or_error(config_file)), daemon=True)
    reader.start()
    reader.join(REFUSED_WITHIN_S)
    if reader.is_alive():  # blocked in open(): let it go, then fail
        with open(os.open(config_file.path, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
        pytest.fail("the reader blocked on what stands at serving.json")
    assert isinstance(outcome[0], FleetConfigUnusable), outcome
    assert str(config_file.path) in str(outcome[0]) and "expected" in str(outcome[0])


def _read_or_error(config_file: FleetConfigFile) -> object:
    try:
        return config_file.read_bytes()
    except Exception as exc:
        return exc


def test_a_writer_stores_the_latest_version_never_null(store: Path, tmp_path: Path) -> None:
    model_dir = store_with(store, tmp_path, ("v1", "v2")) / SMALL_MODEL_NAME
    config_file = FleetConfigFile(model_dir)
    current = FleetConfig.model_validate({**GENERATION_1, "version": "v1"})
    with config_file.locked():
        written = config_file.next_config({"version": None, "variant": "uoi"}, absent=current, invalid=current)
    assert written.version == "v2" and written.generation == 2  # what "latest" is now, stored as such


def test_a_worker_starting_on_a_truncated_serving_json_serves_the_generation_its_siblings_applied(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = store_with(store, tmp_path / "store", ("v1", "v2")) / SMALL_MODEL_NAME
    (tmp_path / "fleet").mkdir()
    monkeypatch.setenv(FLEET_DIR_ENV, str(tmp_path / "fleet"))  # as `ranker serve --workers 2` sets it
    good = FleetConfig.model_validate({**GENERATION_1, "generation": 4, "version": "v2", "variant": "uoi"})
    FleetConfigFile(model_dir).write(good)
    sibling, _ = make_watcher(model_dir)
    assert sibling.start_up().version == "v2"
    (model_dir / "serving.json").write_bytes(good.to_json()[:20])  # a writer that does not rename, mid-write
    respawned, _ = make_watcher(model_dir)
    assert respawned.start_up().version == "v2"
    assert respawned.runtime.active.generation == 4 and respawned.runtime.router.default is Variant.UOI
    assert respawned.status()["last_refusal"]["reason"] == "invalid"
