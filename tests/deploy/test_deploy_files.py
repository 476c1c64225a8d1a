"""Deployment files agree with each other and with a real `ranker serve` started by the image's own command.

Static checks: docker-compose.yml, the Prometheus config and the Grafana provisioning parse and refer to each
other (service names, ports, mount paths, datasource uid, locustfile). Live checks: the Dockerfile's CMD and
HEALTHCHECK, run on this machine with the image's ENV (image paths mapped into a tmp dir), serve a small model,
and every metric the dashboard queries is in that server's /metrics with the type its PromQL assumes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE = REPO_ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = REPO_ROOT / "deploy/prometheus/prometheus.yml"
GRAFANA_DATASOURCES = REPO_ROOT / "deploy/grafana/provisioning/datasources"
GRAFANA_PROVIDERS = REPO_ROOT / "deploy/grafana/provisioning/dashboards"
DASHBOARD = REPO_ROOT / "deploy/grafana/dashboards/mari-serve.json"

REQUIRED_COMPOSE_VARIABLES = ("RANKER_ADMIN_TOKEN", "GRAFANA_ADMIN_PASSWORD")
IMAGE_STORE = "/app/model_store"
# Image paths -> this machine: the image's /app (WORKDIR, model store) and its venv's bin directory.
IMAGE_VENV_BIN = "/opt/venv/bin"
# A bound on waiting, not on start-up time: with pytest-xdist the server may start while other tests' servers and
# models share the cores.
READY_TIMEOUT_S = 240.0
# Series Prometheus makes itself for every target rather than reading them from /metrics.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}
RANGE_FUNCTIONS = ("rate", "irate", "increase")


# ---------------------------------------------------------------- file readers


@dataclass
class Stage:
    """One FROM ... [AS name] block of a Dockerfile and its instructions (keyword, arguments)."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    lines, pending = [], ""
    for raw in text.splitlines():
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            stages.append(Stage(words[0], words[2] if len(words) >= 3 and words[1].upper() == "AS" else None))
        elif stages:
            stages[-1].instructions.append((keyword, args))
        elif keyword == "ARG":
            name, _, default = args.partition("=")
            global_args[name] = default
    return global_args, stages


def stage_env(stages: list[Stage], stage: Stage, host_path: str) -> dict[str, str]:
    """ENV of `stage` including what it inherits from earlier stages it is built FROM ($PATH: host_path)."""
    by_name = {s.name: s for s in stages if s.name}
    chain = [stage]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    env: dict[str, str] = {}
    for ancestor in reversed(chain):
        for args in ancestor.all("ENV"):
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                value = re.sub(r"\$\{?(\w+)\}?",
                               lambda m: env.get(m.group(1), host_path if m.group(1) == "PATH" else ""), value)
                env[name] = value
    return env


def exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT/HEALTHCHECK CMD arguments; only the JSON exec form is accepted (signals reach the server)."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(part, str) for part in value), args
    return value


def healthcheck_command(args: str) -> list[str]:
    """The command of `HEALTHCHECK [--options] CMD [...]`."""
    match = re.match(r"(?P<options>(?:--\S+\s+)*)CMD\s+(?P<command>.+)$", args, re.S)
    assert match, f"HEALTHCHECK without CMD: {args}"
    return exec_form(match.group("command"))


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def yaml_files(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")])


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repo path for a compose service's ./relative bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (REPO_ROOT / source).resolve()
    return mounts


def repo_path_of(mounts: dict[str, Path], container_path: str) -> Path | None:
    """Where a container path of a bind-mounted tree lives in the repo (None: not bind-mounted)."""
    for target, source in mounts.items():
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target):].lstrip("/")
    return None


def dashboard_targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of every panel, rows included."""
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found += [(inner["title"], target) for target in inner.get("targets", [])]
    return found


def promql_metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects (not functions, keywords, labels, numbers or $variables)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations, $__rate_interval
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # grouping labels
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", expr):
        if expr[match.end():].lstrip().startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def range_function_arguments(expr: str) -> set[str]:
    """Series names given to rate()/irate()/increase(): they must be counters or histogram parts."""
    pattern = rf"\b(?:{'|'.join(RANGE_FUNCTIONS)})\s*\(\s*([A-Za-z_:][\w:]*)"
    return set(re.findall(pattern, expr))


def compose_services() -> dict[str, Any]:
    return read_yaml(COMPOSE)["services"]


def service_and_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, f"{url} names no host and port"
    return parts.hostname, parts.port


def container_ports(service: dict[str, Any]) -> set[int]:
    """Container side of a compose service's `ports` entries ("8000", "9090:9090", "${X:-1}:1")."""
    return {int(str(entry).rsplit(":", 1)[-1].split("/")[0]) for entry in service.get("ports", [])}


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_runtime_stage_is_non_root_with_a_healthz_healthcheck_and_a_model_volume() -> None:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    runtime = stages[-1]  # the default build target
    user = runtime.last("USER")
    assert user and user.split(":")[0] not in {"root", "0"}, f"runtime USER is {user!r}"
    healthcheck = runtime.last("HEALTHCHECK")
    assert healthcheck and "/healthz" in " ".join(healthcheck_command(healthcheck))
    assert runtime.last("CMD") or runtime.last("ENTRYPOINT"), "runtime stage has no start command"
    assert any(IMAGE_STORE in volume for volume in runtime.all("VOLUME")), "model store is not a volume"
    copies = runtime.all("COPY")
    assert any("--from=" in copy and IMAGE_STORE in copy for copy in copies), "default model not copied from the build"
    assert not any(copy.split()[0] in {"service", "."} for copy in copies), "runtime stage copies sources, not the venv"


def test_dockerfile_installs_cpu_torch_before_the_package_and_trains_the_default_model_at_build() -> None:
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    runs = [(stage, run) for stage in stages for run in stage.all("RUN")]
    torch_at = next(i for i, (_, run) in enumerate(runs) if "pip install torch==" in run)
    package_at = next(i for i, (_, run) in enumerate(runs) if re.search(r"pip install '?(\.|-e)", run))
    train_at = next(i for i, (_, run) in enumerate(runs)
                    if f"ranker train --arch mmoe --name default --store {IMAGE_STORE}" in run)
    assert torch_at < package_at < train_at
    builder = runs[torch_at][0]
    index_args = dict(arg.partition("=")[::2] for arg in builder.all("ARG"))
    torch_run = runs[torch_at][1]
    resolved = re.sub(r"\$\{?(\w+)\}?", lambda m: index_args.get(m.group(1), global_args.get(m.group(1), "")),
                      torch_run)
    assert "--index-url https://download.pytorch.org/whl/cpu" in resolved, resolved
    assert "torch==2.13.0" in resolved, resolved
    assert runs[train_at][0] is builder and stages[-1] is not builder, "training must happen in a build stage"


# ---------------------------------------------------------------- compose


def test_compose_variables_are_either_required_or_have_an_explicit_default() -> None:
    text = COMPOSE.read_text()
    uses = re.findall(r"\$\{([^}]*)\}", text)
    assert uses, "compose reads no variables"
    for use in uses:
        assert re.fullmatch(r"\w+(:\?.+|:-.*)", use), f"${{{use}}}: neither required (:?) nor defaulted (:-)"
    for name in REQUIRED_COMPOSE_VARIABLES:
        assert re.search(rf"\$\{{{name}:\?[^}}]+\}}", text), f"{name} must be required with a message"


def test_ranker_service_scales_without_host_port_conflicts() -> None:
    ranker = compose_services()["ranker"]
    assert "container_name" not in ranker, "a fixed container_name allows one replica only"
    for entry in ranker.get("ports", []):
        assert ":" not in str(entry), f"fixed host port {entry!r}: `--scale ranker=3` would conflict"
    assert ranker["environment"]["RANKER_ADMIN_TOKEN"].startswith("${RANKER_ADMIN_TOKEN:?")


def test_prometheus_discovers_ranker_replicas_by_compose_service_name_on_the_served_port() -> None:
    services = compose_services()
    config = read_yaml(PROMETHEUS_CONFIG)
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    served_port = int(services["ranker"]["environment"].get("RANKER_PORT")
                      or stage_env(stages, stages[-1], "")["RANKER_PORT"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    dns = jobs["ranker"]["dns_sd_configs"]
    assert [name for sd in dns for name in sd["names"]] == ["ranker"]
    assert all(sd["port"] == served_port and sd.get("type", "SRV") == "A" for sd in dns)
    assert "ranker" in services
    prometheus = services["prometheus"]
    config_flag = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert repo_path_of(bind_mounts(prometheus), config_flag.partition("=")[2]) == PROMETHEUS_CONFIG


def test_grafana_provisioning_is_mounted_and_its_datasource_is_the_compose_prometheus() -> None:
    services = compose_services()
    grafana = services["grafana"]
    mounts = bind_mounts(grafana)
    assert repo_path_of(mounts, "/etc/grafana/provisioning/datasources") == GRAFANA_DATASOURCES
    assert repo_path_of(mounts, "/etc/grafana/provisioning/dashboards") == GRAFANA_PROVIDERS
    datasources = [ds for path in yaml_files(GRAFANA_DATASOURCES) for ds in read_yaml(path)["datasources"]]
    prometheus_sources = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert len(prometheus_sources) == 1
    source = prometheus_sources[0]
    host, port = service_and_port(source["url"])
    assert host in services and port in container_ports(services[host])
    scrape_interval = read_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape_interval, "$__rate_interval assumes the scrape interval"
    providers = [p for path in yaml_files(GRAFANA_PROVIDERS) for p in read_yaml(path)["providers"]]
    provided = {repo_path_of(mounts, p["options"]["path"]) for p in providers}
    assert DASHBOARD.parent in provided, f"no provider reads {DASHBOARD.parent}: {provided}"
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home is None or repo_path_of(mounts, home) == DASHBOARD


def test_dashboard_queries_only_the_provisioned_datasource_uid() -> None:
    uids = {ds["uid"] for path in yaml_files(GRAFANA_DATASOURCES) for ds in read_yaml(path)["datasources"]}
    dashboard = json.loads(DASHBOARD.read_text())
    targets = dashboard_targets(dashboard)
    assert targets
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in uids, panel["title"]
            assert panel.get("targets"), f"panel {panel['title']!r} has no query"
    for title, target in targets:
        assert target["datasource"]["uid"] in uids, title
        assert target["expr"].strip(), title


def test_dashboard_covers_latency_throughput_stages_admission_and_shadow() -> None:
    exprs = " ".join(target["expr"] for _, target in dashboard_targets(json.loads(DASHBOARD.read_text())))
    for needed in ("histogram_quantile(0.50, sum by (le, variant) (rate(ranker_request_duration_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le, variant) (rate(ranker_request_duration_seconds_bucket",
                   "rate(ranker_candidates_scored_total", "sum by (stage)", "ranker_requests_in_flight",
                   'ranker_requests_total{status="503"}', "ranker_shadow_comparisons_total",
                   "ranker_shadow_mismatches_total"):
        assert needed in exprs, needed


def test_dashboard_repeats_a_row_of_panels_per_served_model() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert "label_values(ranker_requests_total" in variables["model"]["query"]["query"]
    assert variables["model"]["includeAll"] and variables["model"]["multi"]
    panels = dashboard["panels"]
    start = next(i for i, panel in enumerate(panels) if panel.get("repeat") == "model")
    assert panels[start]["type"] == "row" and all(panel["type"] != "row" for panel in panels[start + 1:])
    exprs = [target["expr"] for panel in panels[start + 1:] for target in panel["targets"]]
    assert len(exprs) >= 4 and all('model=~"$model"' in expr for expr in exprs)
    assert any("by (le, version)" in expr for expr in exprs)


def test_dashboard_job_matchers_name_prometheus_jobs() -> None:
    jobs = {job["job_name"] for job in read_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    exprs = [target["expr"] for _, target in dashboard_targets(json.loads(DASHBOARD.read_text()))]
    used = {job for expr in exprs for job in re.findall(r'\bjob\s*=~?\s*"([^"]+)"', expr)}
    assert used and used <= jobs, f"{used - jobs} are not Prometheus job names"


def test_locust_targets_the_ranker_service_with_the_repo_locustfile() -> None:
    services = compose_services()
    locust = services["locust"]
    command = locust["command"]
    command = shlex.split(command) if isinstance(command, str) else command
    locustfile = repo_path_of(bind_mounts(locust), command[command.index("-f") + 1])
    assert locustfile == REPO_ROOT / "loadtest/locustfile.py" and locustfile.is_file()
    host, port = service_and_port(command[command.index("--host") + 1])
    assert host == "ranker" and port == int(services["ranker"]["environment"]["RANKER_PORT"])
    assert locust["depends_on"]["ranker"]["condition"] == "service_healthy"


# ---------------------------------------------------------------- the image's start command, run here


@dataclass
class Served:
    """The image's CMD running on this machine, and what was observed while it started."""

    url: str
    env: dict[str, str]
    process: subprocess.Popen
    log_path: Path
    first_healthz: int
    first_readyz: int | None  # status before the model was ready; None when /readyz was 200 at once

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]


def _map_paths(value: str, image_to_host: dict[str, str]) -> str:
    for image_path, host_path in image_to_host.items():
        value = value.replace(image_path, host_path)
    return value


def _train_small_model(store: Path, name: str) -> None:
    """A small default-structured MMoE: seconds to train, not the image's minute."""
    from tests.small_artifacts import save_small_mmoe

    save_small_mmoe(store, name)


def _wait_for(url: str, process: subprocess.Popen, log_path: Path, deadline: float) -> int:
    """First HTTP status answered at `url` (any status), failing if the server exits or never answers."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {log_path.read_text()[-4000:]}")
        try:
            return httpx.get(url, timeout=2.0).status_code
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"no answer from {url} in {READY_TIMEOUT_S}s: {log_path.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Run the runtime stage's CMD with its ENV (/app and the venv mapped here), shadowing every request."""
    root = tmp_path_factory.mktemp("image_app")
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    runtime = stages[-1]
    image_to_host = {IMAGE_VENV_BIN: str(Path(sys.executable).parent), "/app": str(root)}
    image_env = {name: _map_paths(value, image_to_host)
                 for name, value in stage_env(stages, runtime, os.environ.get("PATH", "")).items()}
    _train_small_model(Path(image_env["RANKER_MODEL_STORE"]), image_env["RANKER_MODEL_NAME"])
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env = {
        **inherited, **image_env,
        "RANKER_HOST": "127.0.0.1", "RANKER_PORT": str(port),  # loopback and a free port instead of 0.0.0.0:8000
        # Test-only: a light warm-up, one thread on a shared machine, and a shadow comparison for every request
        # (labelled metrics appear in /metrics only once observed).
        "RANKER_WARMUP_CANDIDATES": "[1, 16]", "RANKER_ANALYSIS_CANDIDATES": "100", "RANKER_TORCH_THREADS": "1",
        "RANKER_SHADOW_VARIANT": "vani", "RANKER_SHADOW_SAMPLE_RATE": "1.0",
        "RANKER_COMPILE": "off",  # no torch.compile at start-up: minutes of inductor for nothing asserted here
    }
    command = [*exec_form(runtime.last("ENTRYPOINT") or "[]"), *exec_form(runtime.last("CMD") or "[]")]
    workdir = _map_paths(runtime.last("WORKDIR") or "/app", image_to_host)
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        first_healthz = _wait_for(f"{url}/healthz", process, log_path, deadline)
        first_readyz = httpx.get(f"{url}/readyz", timeout=2.0).status_code
        readyz = first_readyz
        while readyz != 200 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            readyz = httpx.get(f"{url}/readyz", timeout=2.0).status_code
        assert readyz == 200, f"/readyz stayed {readyz}: {log_path.read_text()[-4000:]}"
        yield Served(url, env, process, log_path, first_healthz, None if first_readyz == 200 else first_readyz)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def scraped(served: Served) -> dict[str, str]:
    """Sample name -> metric type from /metrics after a few valid /rank requests and their shadow comparisons."""
    from service.serving.example_request import example_request
    from service.store.artifact import load_artifact

    schema = load_artifact(Path(served.env["RANKER_MODEL_STORE"]) / served.env["RANKER_MODEL_NAME"]).schema
    for seed, (n, columnar) in enumerate(((20, True), (5, False), (1, True))):
        body = example_request(schema, n=n, columnar=columnar, seed=seed)
        response = httpx.post(f"{served.url}/rank", json=body, timeout=30.0)
        assert response.status_code == 200, response.text
    # A serving.json the server refuses (unknown variant): ranker_config_rejections_total exists from then on.
    store = Path(served.env["RANKER_MODEL_STORE"]) / served.env["RANKER_MODEL_NAME"]
    (store / "serving.json").write_text(json.dumps({"generation": 1, "variant": "no-such-variant"}))
    deadline = time.monotonic() + 60.0  # bounds the wait only
    awaited = {"ranker_shadow_comparisons_total", "ranker_config_rejections_total"}
    while True:  # shadow comparisons run in the background, after the responses; the config is polled
        samples = _sample_types(httpx.get(f"{served.url}/metrics", timeout=5.0).text)
        if awaited <= set(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def _sample_types(text: str) -> dict[str, str]:
    """Every exposed sample name (with its _total/_bucket/_sum/_count suffix) -> its family's type."""
    return {sample.name: family.type for family in text_string_to_metric_families(text) for sample in family.samples}


def test_image_start_command_answers_healthz_and_turns_ready(served: Served) -> None:
    assert served.first_healthz == 200
    assert httpx.get(f"{served.url}/readyz", timeout=5.0).status_code == 200
    assert served.first_readyz in (None, 503)


def test_image_healthcheck_command_passes_against_the_server_and_fails_without_one(served: Served) -> None:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    command = healthcheck_command(stages[-1].last("HEALTHCHECK"))
    assert subprocess.run(command, env=served.env, timeout=30, capture_output=True).returncode == 0
    nobody_there = {**served.env, "RANKER_PORT": str(free_port())}
    assert subprocess.run(command, env=nobody_there, timeout=30, capture_output=True).returncode != 0


def test_prometheus_metrics_path_is_served_in_the_text_format(served: Served) -> None:
    metrics_path = next(job for job in read_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
                        if job["job_name"] == "ranker").get("metrics_path", "/metrics")
    response = httpx.get(f"{served.url}{metrics_path}", timeout=5.0)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")


def test_every_dashboard_metric_is_exported_by_the_running_server(scraped: dict[str, str]) -> None:
    exprs = [target["expr"] for _, target in dashboard_targets(json.loads(DASHBOARD.read_text()))]
    names = {name for expr in exprs for name in promql_metric_names(expr)} - SCRAPE_SERIES
    assert len(names) >= 10, names  # the extraction found the queries' series
    missing = sorted(names - set(scraped))
    assert not missing, f"queried but not exported: {missing}; exported: {sorted(scraped)}"


def test_dashboard_functions_get_series_of_the_type_they_assume(scraped: dict[str, str]) -> None:
    for _, target in dashboard_targets(json.loads(DASHBOARD.read_text())):
        expr = target["expr"]
        for name in range_function_arguments(expr) & set(scraped):  # absent ones: the test above reports them
            kind = scraped[name]
            assert kind in {"counter", "histogram"} and not name.endswith("_created"), f"{expr}: rate of a {kind}"
            assert kind != "counter" or name.endswith("_total"), f"{expr}: counters are queried as <name>_total"
        if "histogram_quantile" in expr:
            series = promql_metric_names(expr)
            assert series and all(name.endswith("_bucket") for name in series), expr
            assert all(scraped.get(name, "histogram") == "histogram" for name in series), expr


def test_promql_metric_extraction_keeps_series_and_drops_functions_labels_and_numbers() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, variant) '
            '(rate(a_seconds_bucket{status="503", x=~"y"}[$__rate_interval])))'
            " / ignoring (stage) group_left sum(b_total offset 5m) * 1e-5 + on (job) up{job=\"ranker\"}")
    assert promql_metric_names(expr) == {"a_seconds_bucket", "b_total", "up"}
    assert range_function_arguments(expr) == {"a_seconds_bucket"}


def test_image_start_command_exits_cleanly_on_sigterm(served: Served) -> None:
    """Last in the module: stops the shared server (docker stop sends SIGTERM to the CMD)."""
    served.process.send_signal(signal.SIGTERM)
    # uvicorn re-raises the captured signal after its graceful shutdown, so -SIGTERM (docker: 143) is clean too.
    assert served.process.wait(35) in (0, -signal.SIGTERM), served.log()
    assert "Application shutdown complete" in served.log(), served.log()
