"""Prometheus for real (Debian's `prometheus` package: the server and promtool), not the config read as text.

promtool checks deploy/prometheus and unit-tests its alert rules (and a broken threshold fails them). Then a
real prometheus scrapes a real `ranker serve --workers 2` on 127.0.0.1 through a short bounded load (valid
requests, a burst that overloads it, a serving.json it refuses), and every PromQL expression of every Grafana
panel and of every alert and recording rule, evaluated through Prometheus's HTTP API, returns series; every
metric those expressions name has series of its own, so an `or vector(0)` cannot hide a missing one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.processes import start, stop, wait_ok
from tests.deploy.test_deploy_files import DASHBOARD, PROMETHEUS_CONFIG, dashboard_targets, promql_metric_names
from tests.ports import free_port

ALERT_RULES = PROMETHEUS_CONFIG.parent / "alerts.yml"
ALERT_TESTS = PROMETHEUS_CONFIG.parent / "alerts_test.yml"
JOB = "ranker"  # the dashboard's and the rules' job="ranker"
MODEL_NAME = "default"
SCRAPE_INTERVAL = "1s"
# Grafana's variables, as it would set them on a 1 s scrape over the few seconds this test runs: $__rate_interval
# spans the whole load (>= 4 scrapes), $__range the stat panels' dashboard range.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$model": ".+"}  # $model: every model
# A bound on waiting for scrapes and rule evaluations, not a claim about speed.
SERIES_TIMEOUT_S = 60.0
OVERLOAD_BURSTS = 20  # bursts of concurrent requests sent until one is refused with 503
BURST_SIZE = 8
THRESHOLD_COMPARISON = re.compile(r"^(?P<signal>.+?)\s*(?:>|<|>=|<=|==|!=)\s*[-+0-9.e]+\s*$", re.S)


def require_tool(name: str) -> str:
    """The tool's path; a clear failure, never a skip, when Debian's prometheus package is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's prometheus package (`make setup` does it as root: "
                    "apt-get install prometheus)")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- promtool


def test_promtool_accepts_the_prometheus_config_and_the_rule_files_it_loads() -> None:
    result = run_promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alerts.yml" in result.stdout, "prometheus.yml loads no alerts.yml"


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = run_promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_fail_when_a_threshold_is_wrong(tmp_path: Path) -> None:
    """The unit tests can fail: RankerHighErrorRate at 50% instead of 1% misses the 5% error test case."""
    rules = ALERT_RULES.read_text()
    assert "ranker:server_error_ratio:rate5m > 0.01" in rules
    (tmp_path / "alerts.yml").write_text(rules.replace("server_error_ratio:rate5m > 0.01",
                                                       "server_error_ratio:rate5m > 0.5"))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts_test.yml")
    result = run_promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0 and "RankerHighErrorRate" in result.stdout + result.stderr, result.stdout


# ---------------------------------------------------------------- a live ranker scraped by a live prometheus


@dataclass
class Stack:
    ranker_url: str
    prometheus_url: str
    statuses: dict[int, int]  # HTTP status -> count, over the load

    def query(self, expr: str) -> list[dict[str, Any]]:
        return prometheus_query(self.prometheus_url, expr)


def prometheus_query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    """The series an instant query returns now; a failure for a query Prometheus refuses."""
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10.0)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {response.text}"
    return body["data"]["result"]


def _prometheus_config(ranker_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml's ranker job and rules, the compose DNS discovery swapped for this
    machine's server, scraped and evaluated every second."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    ranker = {key: value for key, value in jobs[JOB].items() if key != "dns_sd_configs"}
    ranker["static_configs"] = [{"targets": [f"127.0.0.1:{ranker_port}"]}]
    return {
        "global": {**config["global"], "scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(PROMETHEUS_CONFIG.parent / path) for path in config["rule_files"]],
        "scrape_configs": [ranker],
    }


def _wait_first_scrape(prometheus_url: str) -> None:
    """Until the ranker target has been scraped (discovery reaches the scrape manager seconds after start)."""
    deadline = time.monotonic() + SERIES_TIMEOUT_S
    query = f'up{{job="{JOB}"}} == 1'
    while not prometheus_query(prometheus_url, query):
        assert time.monotonic() < deadline, f"prometheus never scraped the ranker within {SERIES_TIMEOUT_S}s"
        time.sleep(0.5)


def _send_load(url: str, store: Path) -> dict[int, int]:
    """Valid requests of both shapes, one invalid, bursts until the zero-length queue refuses one (503)."""
    from service.serving.example_request import example_request
    from service.store.artifact import load_artifact

    schema = load_artifact(store / MODEL_NAME).schema
    statuses: dict[int, int] = {}

    def post(body: Any) -> int:
        status = httpx.post(f"{url}/rank", json=body, timeout=30.0).status_code
        statuses[status] = statuses.get(status, 0) + 1
        return status

    for seed in range(12):
        assert post(example_request(schema, n=50 + 40 * seed, columnar=seed % 2 == 0, seed=seed)) == 200
    post({"user_id": "u1", "candidates": []})  # 422: not a valid request
    burst = [example_request(schema, n=2000, columnar=True, seed=100 + i) for i in range(BURST_SIZE)]
    with ThreadPoolExecutor(BURST_SIZE) as pool:
        for _ in range(OVERLOAD_BURSTS):
            if 503 in list(pool.map(post, burst)):
                break
    return statuses


def _refuse_a_fleet_config(url: str, store: Path) -> None:
    """A serving.json naming an unknown variant: every worker refuses it (ranker_config_rejections_total)."""
    (store / MODEL_NAME / "serving.json").write_text(json.dumps({"generation": 1, "variant": "no-such-variant"}))
    deadline = time.monotonic() + SERIES_TIMEOUT_S
    while "ranker_config_rejections_total" not in httpx.get(f"{url}/metrics", timeout=5.0).text:
        assert time.monotonic() < deadline, "no process refused the broken serving.json"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from tests.small_artifacts import save_small_mmoe

    prometheus = require_tool("prometheus")
    root = tmp_path_factory.mktemp("prometheus_live")
    store = root / "model_store"
    save_small_mmoe(store, MODEL_NAME)
    ranker_port, prometheus_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("RANKER_") and key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({
        "RANKER_MODEL_STORE": str(store), "RANKER_MODEL_NAME": MODEL_NAME, "RANKER_COMPILE": "off",
        "RANKER_WARMUP_CANDIDATES": "[1, 16]", "RANKER_ANALYSIS_CANDIDATES": "100", "RANKER_TORCH_THREADS": "1",
        "RANKER_DRAIN_DELAY_S": "0", "RANKER_CONFIG_POLL_S": "0.5",
        # every request compared on the shadow (its series exist once observed), and no queue: a burst is refused
        "RANKER_SHADOW_VARIANT": "vani", "RANKER_SHADOW_SAMPLE_RATE": "1.0", "RANKER_MAX_QUEUED_REQUESTS": "0",
    })
    ranker_bin = str(Path(sys.executable).parent / "ranker")
    ranker_log, prometheus_log = root / "ranker.log", root / "prometheus.log"
    ranker = start([ranker_bin, "serve", "--host", "127.0.0.1", "--port", str(ranker_port), "--workers", "2"],
                    env, ranker_log)
    config_path = root / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(_prometheus_config(ranker_port)))
    server = None
    try:
        wait_ok(f"http://127.0.0.1:{ranker_port}/readyz", ranker, ranker_log)
        server = start([prometheus, f"--config.file={config_path}", f"--storage.tsdb.path={root / 'tsdb'}",
                         f"--web.listen-address=127.0.0.1:{prometheus_port}"], env, prometheus_log)
        prometheus_url = f"http://127.0.0.1:{prometheus_port}"
        wait_ok(f"{prometheus_url}/-/ready", server, prometheus_log)
        ranker_url = f"http://127.0.0.1:{ranker_port}"
        _wait_first_scrape(prometheus_url)  # counters seen before the load, so rate() sees it arrive
        statuses = _send_load(ranker_url, store)
        _refuse_a_fleet_config(ranker_url, store)
        yield Stack(ranker_url, prometheus_url, statuses)
    finally:
        if server is not None:
            stop(server)
        stop(ranker)


def _dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for title, target in dashboard_targets(dashboard):
        expr = target["expr"]
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"panel {title!r}: a Grafana variable this test does not set: {expr}"
        found.append((f"panel {title!r}", expr))
    return found


def _rule_expressions() -> list[tuple[str, str]]:
    """Each recording rule's expression, and what each alert compares to its threshold."""
    found = []
    for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                found.append((f"record {rule['record']}", rule["expr"]))
            else:
                compared = THRESHOLD_COMPARISON.match(rule["expr"].strip())
                assert compared, f"alert {rule['alert']}: not `<signal> <op> <threshold>`: {rule['expr']}"
                found.append((f"alert {rule['alert']}", compared.group("signal")))
    return found


def _empty_expressions(stack: Stack, expressions: list[tuple[str, str]]) -> list[str]:
    """Those that return no series, polled until none does (rules and scrapes run every second) or the bound."""
    deadline = time.monotonic() + SERIES_TIMEOUT_S
    while True:
        empty = [f"{where}: {expr}" for where, expr in expressions if not stack.query(expr)]
        if not empty or time.monotonic() > deadline:
            return empty
        time.sleep(1.0)


def test_the_load_got_answers_of_every_kind_the_dashboard_shows(stack: Stack) -> None:
    assert stack.statuses.get(200, 0) >= 12 and stack.statuses.get(422) == 1, stack.statuses
    assert stack.statuses.get(503, 0) >= 1, f"no burst of {BURST_SIZE} was refused: {stack.statuses}"


def test_prometheus_scrapes_the_ranker_job(stack: Stack) -> None:
    targets = httpx.get(f"{stack.prometheus_url}/api/v1/targets", timeout=10.0).json()["data"]["activeTargets"]
    assert [(target["labels"]["job"], target["health"]) for target in targets] == [(JOB, "up")], targets


def test_every_dashboard_panel_expression_returns_series(stack: Stack) -> None:
    expressions = _dashboard_expressions()
    assert len(expressions) >= 25
    assert _empty_expressions(stack, expressions) == []


def test_every_alert_and_recording_rule_expression_returns_series(stack: Stack) -> None:
    expressions = _rule_expressions()
    assert {where for where, _ in expressions} >= {
        "alert RankerHighErrorRate", "alert RankerP99OverSLO", "alert RankerShadowMismatches",
        "alert RankerConfigRefused", "alert RankerNoReadyReplica"}
    assert _empty_expressions(stack, expressions) == []


def test_every_metric_the_expressions_name_has_series_of_its_own(stack: Stack) -> None:
    """`or vector(0)` returns a series for a metric that does not exist: each name is queried alone too."""
    names = set()
    for _, expr in _dashboard_expressions() + _rule_expressions():
        names |= promql_metric_names(expr)
    assert {"ranker_config_generation", "ranker_config_rejections_total", "ranker_model_info"} <= names
    assert _empty_expressions(stack, [(f"metric {name}", name) for name in sorted(names)]) == []


def test_the_refused_fleet_config_fires_RankerConfigRefused_and_the_rest_stay_quiet(stack: Stack) -> None:
    deadline = time.monotonic() + SERIES_TIMEOUT_S
    while True:
        alerts = httpx.get(f"{stack.prometheus_url}/api/v1/alerts", timeout=10.0).json()["data"]["alerts"]
        states = {alert["labels"]["alertname"]: alert["state"] for alert in alerts}
        if states.get("RankerConfigRefused") == "firing" or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert states.get("RankerConfigRefused") == "firing", states
    assert "RankerNoReadyReplica" not in states and "RankerShadowMismatches" not in states, states
