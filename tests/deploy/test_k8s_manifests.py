"""Kubernetes manifests (deploy/k8s): rendered, validated offline against the Kubernetes API schema, checked
against the code, and the pod's own commands run here under the pod's constraints.

Rendering: `kubectl kustomize` where kubectl is installed, and always tests/deploy/kustomize_lite.py (the
same kustomize features in Python), so every check also runs on a machine without kubectl; where both exist
they must agree object by object. Schema: the `kubernetes-validate` package (bundled OpenAPI schemas, no
network); the ServiceMonitor is a CRD outside those schemas and is checked field by field. Against the code:
probe paths are routes of the FastAPI app, ConfigMap names are Settings fields (or variables the image's CMD
reads), the port is the server's, the HPA's custom metric is one the service exports, the uid is the
Dockerfile's, the shutdown and CPU budgets add up. Live: the writer Job's and the serving pod's containers run
on this machine with the rendered environment, in a user+mount namespace whose root file system is read-only
except the pod's emptyDir and read-write claim mounts (where user namespaces are available).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy import kustomize_lite
from tests.deploy.test_deploy_files import (
    COMPOSE,
    DASHBOARD,
    DOCKERFILE,
    dashboard_targets,
    exec_form,
    free_port,
    parse_dockerfile,
    stage_env,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy/k8s"
TARGETS = {"base": K8S / "base", "overlay": K8S / "overlays/example"}
HPA_SOURCE = K8S / "base/hpa.yaml"
KUBECTL = shutil.which("kubectl")
RENDERERS = ("kustomize_lite", *(("kubectl",) if KUBECTL else ()))
# Oldest Kubernetes minor still widely run and the newest schema bundled with kubernetes-validate 1.37.
SCHEMA_VERSIONS = ("1.30.0", "1.37.0")
EXPECTED_KINDS = {"ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                  "PersistentVolumeClaim", "Job", "ServiceMonitor"}
CRD_KINDS = {"ServiceMonitor"}
SERVICE_MONITOR_SPEC_FIELDS = {"jobLabel", "selector", "endpoints", "namespaceSelector", "targetLabels",
                               "podTargetLabels", "sampleLimit"}
SERVICE_MONITOR_ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels",
                                   "relabelings", "metricRelabelings"}
SERVING_CONTAINER = "ranker"
WRITER_JOB = "mari-serve-config-writer"
ADMIN_SECRET = {"name": "mari-serve-admin", "key": "token", "optional": False}
MIN_STARTUP_BUDGET_S = 300  # a big model's build and warm-up: minutes
CUSTOM_METRIC_BLOCK = re.compile(r"# BEGIN custom-metric example.*?\n(.*?)\n\s*# END custom-metric example", re.S)
IMAGE_VENV_BIN = "/opt/venv/bin"
SECRET_PLACEHOLDER = "k8s-test-admin-token-0123456789abcdef"
# A bound on waiting, not on start-up time: with pytest-xdist the pod's workers may start while other tests'
# servers and models share the cores.
READY_TIMEOUT_S = 240.0


# ---------------------------------------------------------------- rendering


@functools.cache
def _render(renderer: str, target: str) -> tuple[str, ...]:
    """YAML text of every rendered object (cached; callers parse a fresh copy)."""
    if renderer == "kubectl":
        out = subprocess.run([KUBECTL, "kustomize", str(TARGETS[target])], check=True, capture_output=True,
                             text=True, timeout=120).stdout
        objects = [doc for doc in yaml.safe_load_all(out) if doc]
    else:
        objects = kustomize_lite.build(TARGETS[target])
    return tuple(yaml.safe_dump(obj) for obj in objects)


def render(renderer: str, target: str) -> list[dict[str, Any]]:
    return [yaml.safe_load(text) for text in _render(renderer, target)]


@dataclass
class Rendered:
    renderer: str
    target: str
    objects: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [obj for obj in self.all(kind) if name is None or obj["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        return container_named(self.pod, SERVING_CONTAINER)

    @property
    def job_pod(self) -> dict[str, Any]:
        return self.one("Job", WRITER_JOB)["spec"]["template"]["spec"]

    def config_map_data(self, container: dict[str, Any]) -> dict[str, str]:
        """Every key the container gets through envFrom configMapRef (later sources win, as in Kubernetes)."""
        data: dict[str, str] = {}
        for source in container.get("envFrom", []):
            assert set(source) == {"configMapRef"}, source
            data.update(self.one("ConfigMap", source["configMapRef"]["name"])["data"])
        return data


def container_named(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == name)


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def pod_specs(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    return [("Deployment", rendered.pod), ("Job", rendered.job_pod)]


@pytest.fixture(params=[(r, t) for r in RENDERERS for t in TARGETS], ids=lambda p: f"{p[0]}-{p[1]}")
def rendered(request: pytest.FixtureRequest) -> Rendered:
    renderer, target = request.param
    return Rendered(renderer, target, render(renderer, target))


@pytest.fixture(params=RENDERERS)
def overlay(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(request.param, "overlay", render(request.param, "overlay"))


# ---------------------------------------------------------------- facts from the code and the Dockerfile


@functools.cache
def dockerfile_runtime() -> tuple[list[Any], Any]:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    return stages, stages[-1]


def image_env() -> dict[str, str]:
    stages, runtime = dockerfile_runtime()
    return stage_env(stages, runtime, "")


def image_workdir() -> str:
    """WORKDIR of the runtime stage, inherited from the stages it is built FROM."""
    stages, stage = dockerfile_runtime()
    by_name = {s.name: s for s in stages if s.name}
    while stage.last("WORKDIR") is None and stage.base in by_name:
        stage = by_name[stage.base]
    return stage.last("WORKDIR") or "/"


def image_uid() -> int:
    """uid of the runtime stage's USER, from its `useradd ... --uid N ... <user>`."""
    _, runtime = dockerfile_runtime()
    user = runtime.last("USER").split(":")[0]
    if user.isdigit():
        return int(user)
    for run in runtime.all("RUN"):
        match = re.search(rf"useradd\b.*--uid[ =](\d+)\b.*\b{re.escape(user)}\s*$", run)
        if match:
            return int(match.group(1))
    raise AssertionError(f"no useradd for USER {user} in the runtime stage")


def image_command_variables() -> set[str]:
    """RANKER_* variables the image's CMD reads itself (host, port, workers)."""
    _, runtime = dockerfile_runtime()
    return set(re.findall(r"\$\{?(RANKER_\w+)", runtime.last("CMD")))


def settings_env_names() -> set[str]:
    from service.serving.settings import ENV_PREFIX, Settings

    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


@functools.cache
def app_get_paths() -> frozenset[str]:
    from service.api.app import create_app
    from service.serving.settings import Settings

    app = create_app(Settings(model_store=Path("/nonexistent")))  # routes only: the model loads at start-up
    return frozenset(path for path, methods in app.openapi()["paths"].items() if "get" in methods)


def exported_metric_names() -> set[str]:
    from service.serving.metrics import MULTIPROC_ENV, ServiceMetrics

    assert not os.environ.get(MULTIPROC_ENV), "the in-process registry is needed to list the metrics"
    registry = ServiceMetrics().registry
    return {family.name for family in registry.collect()}


def dashboard_jobs() -> set[str]:
    exprs = [target["expr"] for _, target in dashboard_targets(json.loads(DASHBOARD.read_text()))]
    return {job for expr in exprs for job in re.findall(r'\bjob\s*=~?\s*"([^"]+)"', expr)}


def cpu_quantity(value: str | int | float) -> float:
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def effective_env(rendered: Rendered, container: dict[str, Any]) -> dict[str, str]:
    """What the container's process sees: image ENV, then envFrom, then env (Secret values left out)."""
    env = {**image_env(), **rendered.config_map_data(container)}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
    return env


def pre_stop_sleep_s(container: dict[str, Any]) -> int:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return int(command[1])


def custom_metric_example() -> list[dict[str, Any]]:
    """The commented Pods-metric block of deploy/k8s/base/hpa.yaml, uncommented and parsed."""
    match = CUSTOM_METRIC_BLOCK.search(HPA_SOURCE.read_text())
    assert match, f"no custom-metric example block in {HPA_SOURCE}"
    lines = [re.sub(r"^\s*# ?", "", line) for line in match.group(1).splitlines()]
    return yaml.safe_load(textwrap.dedent("\n".join(lines)))


# ---------------------------------------------------------------- rendering and schema


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed: kustomize_lite renders alone")
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_python_renderer_matches_kubectl_kustomize_object_by_object(target: str) -> None:
    def keyed(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}

    by_kubectl, by_lite = keyed(render("kubectl", target)), keyed(render("kustomize_lite", target))
    assert sorted(by_lite) == sorted(by_kubectl)
    for key, obj in by_kubectl.items():
        assert by_lite[key] == obj, key


def test_python_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("namePrefix: x-\nresources: []\n")
    with pytest.raises(kustomize_lite.Unsupported, match="namePrefix"):
        kustomize_lite.build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("patches:\n  - patch: |-\n      kind: A\n      metadata: {name: a}\n"
                                                 "      spec: {list: [1]}\n")
    with pytest.raises((kustomize_lite.Unsupported, ValueError)):
        kustomize_lite.build(tmp_path)


def test_renders_every_expected_kind_and_no_secret(rendered: Rendered) -> None:
    kinds = [obj["kind"] for obj in rendered.objects]
    assert set(kinds) == EXPECTED_KINDS and len(kinds) == len(set(kinds)), kinds
    assert "Secret" not in kinds, "a Secret must not be committed: the pods refer to one created in the cluster"


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_validates_against_the_kubernetes_api_schema_offline(rendered: Rendered, version: str) -> None:
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, version, strict=True)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = f"{obj['kind']}/{obj['metadata']['name']} at {list(exc.path)}"
            raise AssertionError(f"{where}: {exc.message}") from None


def test_validation_catches_a_misspelt_field() -> None:
    deployment = next(obj for obj in render("kustomize_lite", "base") if obj["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, SCHEMA_VERSIONS[-1], strict=True)


# ---------------------------------------------------------------- objects refer to each other


def test_selectors_ports_and_references_connect(rendered: Rendered) -> None:
    deployment, service = rendered.deployment, rendered.one("Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for constraint in rendered.pod.get("topologySpreadConstraints", []):
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in rendered.container["ports"]}
    assert port["name"] == "http" and port["targetPort"] == "http"
    assert port["port"] == container_ports["http"]
    target = rendered.one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"], "Deployment", deployment["metadata"]["name"])
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in rendered.objects}
    for _, pod in pod_specs(rendered):
        for container in all_containers(pod):
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names, source
        for volume in pod["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names


def test_service_monitor_scrapes_metrics_on_the_services_named_port_as_the_dashboards_job(rendered: Rendered) -> None:
    monitor, service = rendered.one("ServiceMonitor"), rendered.one("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"].get("namespace") == service["metadata"].get("namespace")
    spec = monitor["spec"]
    assert set(spec) <= SERVICE_MONITOR_SPEC_FIELDS, set(spec) - SERVICE_MONITOR_SPEC_FIELDS
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {port["name"] for port in service["spec"]["ports"]}
    assert spec["endpoints"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= SERVICE_MONITOR_ENDPOINT_FIELDS, set(endpoint) - SERVICE_MONITOR_ENDPOINT_FIELDS
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics" and "/metrics" in app_get_paths()
        interval, timeout = (int(endpoint[key].rstrip("s")) for key in ("interval", "scrapeTimeout"))
        assert 0 < timeout <= interval
    assert {service["metadata"]["labels"][spec["jobLabel"]]} == dashboard_jobs(), "Grafana queries another job"


# ---------------------------------------------------------------- the serving container against the code


def test_probes_hit_existing_routes_on_the_named_port_with_a_long_startup_budget(rendered: Rendered) -> None:
    container = rendered.container
    probes = {kind: container[f"{kind}Probe"] for kind in ("startup", "liveness", "readiness")}
    for kind, probe in probes.items():
        assert probe["httpGet"]["port"] == "http", kind
        assert probe["httpGet"]["path"] in app_get_paths(), f"{kind} probe on {probe['httpGet']['path']}"
    assert probes["readiness"]["httpGet"]["path"] == "/readyz"
    assert probes["liveness"]["httpGet"]["path"] == "/healthz"
    startup = probes["startup"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= MIN_STARTUP_BUDGET_S
    assert rendered.deployment["spec"]["progressDeadlineSeconds"] > startup["failureThreshold"] * startup[
        "periodSeconds"], "a slow model build would be reported as a failed rollout"


def test_container_port_is_the_servers_port(rendered: Rendered) -> None:
    from service.api.server import DEFAULT_PORT

    env = effective_env(rendered, rendered.container)
    (port,) = [p for p in rendered.container["ports"] if p["name"] == "http"]
    assert port["containerPort"] == DEFAULT_PORT == int(env["RANKER_PORT"])
    assert env["RANKER_HOST"] == "0.0.0.0"


def test_every_ranker_variable_is_a_setting_or_read_by_the_image_command(rendered: Rendered) -> None:
    allowed = settings_env_names() | image_command_variables()
    assert image_command_variables() == {"RANKER_HOST", "RANKER_PORT", "RANKER_WORKERS"}
    for _, pod in pod_specs(rendered):
        for container in all_containers(pod):
            names = set(rendered.config_map_data(container)) | {e["name"] for e in container.get("env", [])}
            unknown = {name for name in names if name.startswith("RANKER_")} - allowed
            assert not unknown, f"{container['name']}: {sorted(unknown)} are not Settings fields"


def test_settings_accept_the_configured_values(rendered: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.serving.settings import ENV_PREFIX, Settings

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    env = effective_env(rendered, rendered.container)
    for name in settings_env_names() & set(env):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("RANKER_ADMIN_TOKEN", SECRET_PLACEHOLDER)
    settings = Settings()  # raises on a value the service would refuse at start-up
    assert str(settings.model_store) == env["RANKER_MODEL_STORE"]


def test_admin_token_comes_from_a_secret_reference_only(rendered: Rendered) -> None:
    env = {entry["name"]: entry for entry in rendered.container["env"]}
    assert env["RANKER_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == ADMIN_SECRET
    for _, pod in pod_specs(rendered):
        for container in all_containers(pod):
            assert "RANKER_ADMIN_TOKEN" not in rendered.config_map_data(container)
            assert all("value" not in e for e in container.get("env", []) if e["name"] == "RANKER_ADMIN_TOKEN")


def test_workers_times_threads_fit_the_cpu_limit(rendered: Rendered) -> None:
    env = effective_env(rendered, rendered.container)
    # Set explicitly: unset, `ranker serve` divides os.cpu_count() (the node's cores, not the limit) by workers.
    assert "RANKER_TORCH_THREADS" in rendered.config_map_data(rendered.container)
    workers, threads = int(env["RANKER_WORKERS"]), int(env["RANKER_TORCH_THREADS"])
    resources = rendered.container["resources"]
    limit = cpu_quantity(resources["limits"]["cpu"])
    assert workers * threads <= limit, f"{workers} workers x {threads} threads > {limit} CPUs"
    assert resources["requests"] == resources["limits"], "Guaranteed QoS: requests equal limits"
    for _, pod in pod_specs(rendered):
        for container in all_containers(pod):
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), container["name"]


def test_grace_period_covers_the_prestop_drain_and_the_graceful_shutdown(rendered: Rendered) -> None:
    from service.serving.settings import Settings

    env = effective_env(rendered, rendered.container)
    graceful = float(env.get("RANKER_GRACEFUL_SHUTDOWN_S", Settings.model_fields["graceful_shutdown_s"].default))
    drain_after_sigterm = float(env.get("RANKER_DRAIN_DELAY_S", Settings.model_fields["drain_delay_s"].default))
    drain = pre_stop_sleep_s(rendered.container)
    assert drain >= 5, "the endpoint removal needs a few seconds to reach kube-proxy and load balancers"
    assert rendered.pod["terminationGracePeriodSeconds"] > drain + drain_after_sigterm + graceful


def test_pods_run_as_the_images_user_with_a_read_only_root_and_no_privileges(rendered: Rendered) -> None:
    uid = image_uid()
    for kind, pod in pod_specs(rendered):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == uid, kind
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, kind
        assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False, kind
        for container in all_containers(pod):
            security = container["securityContext"]
            where = f"{kind}/{container['name']}"
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security.get("runAsUser", uid) == uid and not security.get("privileged"), where


def test_the_process_writes_only_to_emptydirs(rendered: Rendered) -> None:
    from service.serving.metrics import MULTIPROC_ENV

    volumes = {volume["name"]: volume for volume in rendered.pod["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in rendered.container["volumeMounts"]}
    assert "emptyDir" in mounts["/tmp"]
    env = {entry["name"]: entry.get("value") for entry in rendered.container["env"]}
    assert int(effective_env(rendered, rendered.container)["RANKER_WORKERS"]) > 1, "multiprocess metrics need it"
    assert "emptyDir" in mounts[env[MULTIPROC_ENV]], f"{MULTIPROC_ENV} is not on an emptyDir"


def test_model_store_claim_is_read_only_in_serving_pods_with_one_writer(rendered: Rendered) -> None:
    claim = rendered.one("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # ReadOnlyMany could not be written by anyone
    store = effective_env(rendered, rendered.container)["RANKER_MODEL_STORE"]
    writers = []
    for kind, pod in pod_specs(rendered):
        claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert [c["claimName"] for c in claims.values()] == [claim["metadata"]["name"]], kind
        for container in all_containers(pod):
            for mount in container.get("volumeMounts", []):
                if mount["name"] in claims:
                    read_only = mount.get("readOnly", False) or claims[mount["name"]].get("readOnly", False)
                    if not read_only:
                        writers.append((kind, container["name"], mount["mountPath"]))
        if kind == "Deployment":
            (volume,) = claims.values()
            assert volume["readOnly"] is True
            for container in all_containers(pod):
                (mount,) = [m for m in container["volumeMounts"] if m["name"] in claims]
                assert mount["mountPath"] == store and mount["readOnly"] is True, container["name"]
    # One writer, the Job: seed-store beside the image's own store, writer where the serving pods read it.
    assert sorted(writers) == [("Job", "seed-store", "/mnt/model_store"), ("Job", "writer", store)], writers


def test_hpa_scales_on_cpu_and_owns_the_replica_count(rendered: Rendered) -> None:
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    (cpu,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert 0 < cpu["resource"]["target"]["averageUtilization"] < 100
    assert "replicas" not in rendered.deployment["spec"], "kubectl apply would reset the HPA's count"
    assert hpa["spec"]["minReplicas"] >= 2 <= hpa["spec"]["maxReplicas"]
    budget = rendered.one("PodDisruptionBudget")["spec"]
    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable") == 1
    assert hpa["spec"]["minReplicas"] - budget.get("maxUnavailable", 0) >= 1, "a drain must leave a pod serving"


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_hpa_custom_metric_example_names_an_exported_metric_and_validates(version: str) -> None:
    metrics = custom_metric_example()
    assert [m["type"] for m in metrics] == ["Pods"]
    name = metrics[0]["pods"]["metric"]["name"]
    assert name == "ranker_requests_in_flight" and name in exported_metric_names()
    hpa = next(obj for obj in render("kustomize_lite", "base") if obj["kind"] == "HorizontalPodAutoscaler")
    hpa["spec"]["metrics"] += metrics
    kubernetes_validate.validate(hpa, version, strict=True)


def test_base_image_is_the_one_compose_builds_from_the_dockerfile() -> None:
    compose_image = yaml.safe_load(COMPOSE.read_text())["services"]["ranker"]["image"]
    rendered = Rendered("kustomize_lite", "base", render("kustomize_lite", "base"))
    for _, pod in pod_specs(rendered):
        assert {c["image"] for c in all_containers(pod)} == {compose_image}
    assert rendered.container.get("command") is None and rendered.container.get("args") is None, \
        "the serving container runs the image's CMD"


# ---------------------------------------------------------------- the example overlay


def test_overlay_namespaces_retags_scales_and_splits_consistently(overlay: Rendered) -> None:
    base = Rendered(overlay.renderer, "base", render(overlay.renderer, "base"))
    kustomization = yaml.safe_load((TARGETS["overlay"] / "kustomization.yaml").read_text())
    assert {obj["metadata"].get("namespace") for obj in overlay.objects} == {kustomization["namespace"]}
    (image,) = kustomization["images"]
    for _, pod in pod_specs(overlay):
        assert {c["image"] for c in all_containers(pod)} == {f"{image['newName']}:{image['newTag']}"}
    hpa, base_hpa = overlay.one("HorizontalPodAutoscaler")["spec"], base.one("HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] > base_hpa["minReplicas"] and hpa["maxReplicas"] >= base_hpa["maxReplicas"]
    assert overlay.one("PersistentVolumeClaim")["spec"].get("storageClassName")
    split = json.loads(overlay.config_map_data(overlay.container)["RANKER_AB_SPLIT"])
    assert split and "RANKER_AB_SPLIT" not in base.config_map_data(base.container)
    assert overlay.one("ConfigMap")["metadata"]["name"] != base.one("ConfigMap")["metadata"]["name"], \
        "a changed ConfigMap must get a new name, or the pods would not roll"
    args = container_named(overlay.job_pod, "writer")["args"]
    assert args[:2] == ["config", "set"]
    assert json.loads(args[args.index("--ab-split") + 1]) == split, "serving.json and start-up split differ"


def cli_has_config() -> bool:
    """Whether this tree's `ranker` has the fleet config's `config` command (service/serving/fleet_config.py)."""
    from service.cli import build_parser

    parser = build_parser()
    return "config" in next(a for a in parser._actions if a.dest == "command").choices


def test_writer_job_args_parse_with_the_ranker_cli(overlay: Rendered) -> None:
    """Where the CLI has no `config` command yet (fleet config not in this tree), only the shape is checked."""
    from service.cli import build_parser

    args = container_named(overlay.job_pod, "writer")["args"]
    if cli_has_config():
        parsed = build_parser().parse_args(args)
        assert (parsed.command, parsed.config_command) == ("config", "set")
    else:
        assert args[:2] == ["config", "set"] and all(isinstance(arg, str) for arg in args)


# ---------------------------------------------------------------- the pods' commands, run here


@dataclass
class Layout:
    """Host directories standing in for the image's /app, the claim, and each pod's emptyDirs."""

    root: Path
    image_app: Path  # the image's /app, with its baked default model
    claim: Path  # the PersistentVolumeClaim's content
    sandbox: bool
    emptydirs: dict[str, Path] = field(default_factory=dict)

    def emptydir(self, pod: str, name: str) -> Path:
        path = self.emptydirs.setdefault(f"{pod}/{name}", self.root / "emptydir" / pod / name)
        path.mkdir(parents=True, exist_ok=True)
        return path


SANDBOX_SCRIPT = r"""
set -eu
root=$1; workdir=$2; shift 2
mount --rbind / "$root"
while [ "$1" != -- ]; do
  case $1 in
    tmpfs:*) mount -t tmpfs -o size=256m tmpfs "$root${1#tmpfs:}" ;;
    bind:*) mount --bind "${1#bind:}" "$root${1#bind:}" ;;
  esac
  shift
done
shift
mount -o remount,bind,ro "$root"
exec chroot "$root" sh -c 'cd "$0" && exec "$@"' "$workdir" "$@"
"""


def sandbox_works(root: Path) -> bool:
    """Whether user+mount namespaces let us build a read-only root with writable holes here."""
    if shutil.which("unshare") is None or shutil.which("chroot") is None:
        return False
    (root / "newroot").mkdir(parents=True, exist_ok=True)
    hole = root / "hole"
    hole.mkdir(exist_ok=True)
    probe = f'touch {hole}/ok && ! touch {root}/nope 2>/dev/null'
    result = subprocess.run(["unshare", "-rm", "sh", "-c", SANDBOX_SCRIPT, "sandbox", str(root / "newroot"), "/",
                             f"tmpfs:{hole}", "--", "sh", "-c", probe], capture_output=True, timeout=30)
    return result.returncode == 0


@dataclass
class PodProcess:
    command: list[str]
    env: dict[str, str]
    mapping: dict[str, str]


def map_paths(value: str, mapping: dict[str, str]) -> str:
    """Image paths -> host paths, longest first, whole path components only."""
    pattern = "|".join(re.escape(path) for path in sorted(mapping, key=len, reverse=True))
    return re.sub(rf"(?:{pattern})(?![\w.-])", lambda m: mapping[m.group()], value)


def pod_process(rendered: Rendered, layout: Layout, pod_name: str, pod: dict[str, Any], container: dict[str, Any],
                overrides: dict[str, str] | None = None) -> PodProcess:
    """The container's command and environment as Kubernetes would give them, with image paths mapped here."""
    stages, runtime = dockerfile_runtime()
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mapping = {"/app": str(layout.image_app), IMAGE_VENV_BIN: str(Path(sys.executable).parent)}
    writable, binds = [], []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            host = layout.emptydir(pod_name, mount["name"])
            writable.append(f"tmpfs:{host}")
        elif "persistentVolumeClaim" in volume:
            host = layout.claim
            read_only = mount.get("readOnly") or volume["persistentVolumeClaim"].get("readOnly")
            if not read_only:
                binds.append(f"bind:{host}")
        else:
            raise AssertionError(f"volume type of {volume}")
        mapping[mount["mountPath"]] = str(host)
    host_path = "\0host PATH\0"  # the image's $PATH: put back after the image paths are mapped
    pod_env = {**stage_env(stages, runtime, host_path), **rendered.config_map_data(container)}
    for entry in container.get("env", []):
        if "value" in entry:
            pod_env[entry["name"]] = entry["value"]
        elif entry["valueFrom"].get("secretKeyRef"):
            pod_env[entry["name"]] = SECRET_PLACEHOLDER
        else:
            raise AssertionError(f"env source of {entry}")
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("RANKER_") and name not in ("PROMETHEUS_MULTIPROC_DIR", "TMPDIR")}
    env.update({name: map_paths(value, mapping).replace(host_path, os.environ.get("PATH", ""))
                for name, value in pod_env.items()})
    if "/tmp" in mapping:
        env["TMPDIR"] = mapping["/tmp"]  # the pod's /tmp is an emptyDir; here the host's /tmp stays read-only
    env.update(overrides or {})
    if container.get("command"):
        command = [*container["command"], *container.get("args", [])]
    else:
        command = [*exec_form(runtime.last("ENTRYPOINT") or "[]"),
                   *(container.get("args") or exec_form(runtime.last("CMD") or "[]"))]
    command = [map_paths(part, mapping) for part in command]
    workdir = map_paths(container.get("workingDir") or image_workdir(), mapping)
    if layout.sandbox:
        newroot = layout.root / "newroot"
        newroot.mkdir(exist_ok=True)
        command = ["unshare", "-rm", "sh", "-c", SANDBOX_SCRIPT, "sandbox", str(newroot), workdir, *writable, *binds,
                   "--", *command]
    else:
        command = ["sh", "-c", 'cd "$0" && exec "$@"', workdir, *command]
    return PodProcess(command, env, mapping)


def run_container(process: PodProcess, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(process.command, env=process.env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    from tests.small_artifacts import save_small_mmoe

    root = tmp_path_factory.mktemp("k8s_pod")
    image_app, claim = root / "image_app", root / "claim"
    claim.mkdir()
    model_name = image_env()["RANKER_MODEL_NAME"]
    save_small_mmoe(image_app / "model_store", model_name)  # what the image bakes in at build time
    return Layout(root, image_app, claim, sandbox_works(root / "probe"))


@pytest.fixture(scope="module")
def base_render() -> Rendered:
    return Rendered(RENDERERS[-1], "base", render(RENDERERS[-1], "base"))


def seed_claim(rendered: Rendered, layout: Layout) -> subprocess.CompletedProcess[str]:
    seed = container_named(rendered.job_pod, "seed-store")
    result = run_container(pod_process(rendered, layout, "job", rendered.job_pod, seed), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_writer_job_seeds_the_empty_claim_once_and_serving_pods_wait_for_it(base_render: Rendered,
                                                                           layout: Layout) -> None:
    name = image_env()["RANKER_MODEL_NAME"]
    wait = pod_process(base_render, layout, "ranker", base_render.pod, container_named(base_render.pod,
                                                                                      "wait-for-model"))
    if not (layout.claim / name).exists():
        with pytest.raises(subprocess.TimeoutExpired):  # an empty claim: the init container keeps waiting
            run_container(wait, timeout=3)
    first = seed_claim(base_render, layout)
    second = seed_claim(base_render, layout)
    assert "already holds" in second.stdout, second.stdout
    assert "seeded" in first.stdout or "already holds" in first.stdout
    assert sorted(p.name for p in layout.claim.iterdir()) == [name], "a temporary .seeding copy was left"
    baked = layout.image_app / "model_store"
    assert sorted(p.relative_to(layout.claim) for p in layout.claim.rglob("*")) == sorted(
        p.relative_to(baked) for p in baked.rglob("*"))
    assert run_container(wait, timeout=30).returncode == 0
    writer = container_named(base_render.job_pod, "writer")
    assert "args" not in writer
    result = run_container(pod_process(base_render, layout, "job", base_render.job_pod, writer), timeout=60)
    assert result.returncode == 0 and "seed only" in result.stdout, result.stdout + result.stderr


def test_pod_root_file_system_is_read_only_except_its_volumes(base_render: Rendered, layout: Layout) -> None:
    if not layout.sandbox:
        pytest.skip("no user namespaces here: the pod's commands run, but without a read-only root")
    probe = {**base_render.container, "command": ["python", "-c", textwrap.dedent("""
        import os, sys
        def writable(d):
            try:
                open(os.path.join(d, ".probe"), "w").close()
                return True
            except OSError:
                return False
        read_only = ["/", os.environ["HOME"], os.environ["RANKER_MODEL_STORE"], os.getcwd()]
        holes = [os.environ["TMPDIR"], os.environ["PROMETHEUS_MULTIPROC_DIR"]]
        bad = [d for d in read_only if writable(d)] + [d for d in holes if not writable(d)]
        sys.exit(f"wrong access: {bad}" if bad else 0)
    """)]}
    result = run_container(pod_process(base_render, layout, "probe", base_render.pod, probe), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def fleet_config(layout: Layout) -> dict[str, Any] | None:
    """The example overlay's writer Job, run on the seeded claim: `ranker config set ...` writes serving.json.

    None where this tree's CLI has no `config` command (the fleet config is not in it).
    """
    overlay = Rendered(RENDERERS[-1], "overlay", render(RENDERERS[-1], "overlay"))
    seed_claim(overlay, layout)
    if not cli_has_config():
        return None
    writer = container_named(overlay.job_pod, "writer")
    result = run_container(pod_process(overlay, layout, "job", overlay.job_pod, writer), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    written = layout.claim / image_env()["RANKER_MODEL_NAME"] / "serving.json"
    return {"args": writer["args"], "file": written, "bytes": written.read_bytes(),
            "config": json.loads(written.read_bytes())}


@dataclass
class PodServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]


@pytest.fixture(scope="module")
def pod_server(base_render: Rendered, layout: Layout, fleet_config: dict[str, Any] | None) -> Iterator[PodServer]:
    """The serving container of the base Deployment, its own command and environment, on the claim the
    writer Job seeded (and wrote serving.json on, where the fleet config exists)."""
    port = free_port()
    overrides = {"RANKER_HOST": "127.0.0.1", "RANKER_PORT": str(port),  # loopback and a free port here
                 "RANKER_WARMUP_CANDIDATES": "[1, 16]", "RANKER_ANALYSIS_CANDIDATES": "100",  # light start-up:
                 "RANKER_COMPILE": "off"}  # nothing compiled (inductor takes minutes; nothing here asserts on it)
    process = pod_process(base_render, layout, "ranker", base_render.pod, base_render.container, overrides)
    log_path = layout.root / "ranker.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(process.command, env=process.env, stdout=log, stderr=subprocess.STDOUT)
    server = PodServer(f"http://127.0.0.1:{port}", popen, log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        status = None
        while status != 200:
            assert popen.poll() is None, f"the pod's server exited with {popen.returncode}: {server.log()}"
            assert time.monotonic() < deadline, f"not ready in {READY_TIMEOUT_S} s: {server.log()}"
            try:
                status = httpx.get(f"{server.url}/readyz", timeout=2.0).status_code
            except httpx.HTTPError:
                time.sleep(0.2)
        yield server
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()


def test_pod_serves_with_its_workers_and_exports_the_hpa_metric(base_render: Rendered, layout: Layout,
                                                                pod_server: PodServer) -> None:
    from service.serving.example_request import example_request
    from service.store.artifact import load_artifact

    assert httpx.get(f"{pod_server.url}/healthz", timeout=5.0).status_code == 200
    schema = load_artifact(layout.claim / image_env()["RANKER_MODEL_NAME"]).schema
    for seed in range(4):
        response = httpx.post(f"{pod_server.url}/rank", json=example_request(schema, n=20, seed=seed), timeout=30.0)
        assert response.status_code == 200, response.text
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{pod_server.url}/metrics").text)}
    (metric,) = custom_metric_example()
    in_flight = families[metric["pods"]["metric"]["name"]]
    assert in_flight.type == "gauge"
    served = sum(s.value for s in families["ranker_requests"].samples if s.name == "ranker_requests_total")
    assert served == 4, "the multiprocess directory (emptyDir) sums both workers' counts"
    workers = int(effective_env(base_render, base_render.container)["RANKER_WORKERS"])
    deadline = time.monotonic() + READY_TIMEOUT_S  # /readyz answers once the first worker is up
    while pod_server.log().count("Application startup complete") < workers:
        assert time.monotonic() < deadline, pod_server.log()
        time.sleep(0.2)


def test_read_only_pods_apply_the_fleet_config_the_writer_job_wrote(base_render: Rendered, pod_server: PodServer,
                                                                    fleet_config: dict[str, Any] | None) -> None:
    if fleet_config is None:
        pytest.skip("this tree's `ranker` has no `config` command (fleet config): nothing writes serving.json")
    args = fleet_config["args"]
    split = json.loads(args[args.index("--ab-split") + 1])
    written = fleet_config["config"]
    assert written["version"] == args[args.index("--version") + 1] and written["ab_split"] == split
    assert "RANKER_AB_SPLIT" not in base_render.config_map_data(base_render.container)  # so it came from the file
    generation = written["generation"]
    workers = int(effective_env(base_render, base_render.container)["RANKER_WORKERS"])
    deadline = time.monotonic() + 60.0  # bounds the wait only
    while True:  # every worker applies it at start-up or within RANKER_CONFIG_POLL_S
        text = httpx.get(f"{pod_server.url}/metrics", timeout=5.0).text
        samples = [s for f in text_string_to_metric_families(text) if f.name == "ranker_config_generation"
                   for s in f.samples]
        if len(samples) == workers and all(s.value == generation for s in samples):
            break
        assert time.monotonic() < deadline, f"workers did not converge on generation {generation}: {samples}"
        time.sleep(0.5)
    routing = httpx.get(f"{pod_server.url}/v1/models", timeout=10.0).json()["routing"]
    assert routing["ab_split"] == pytest.approx(split)


def test_admin_endpoints_of_read_only_pods_cannot_change_the_fleet_config(layout: Layout, pod_server: PodServer,
                                                                         fleet_config: dict[str, Any] | None) -> None:
    if fleet_config is None:
        pytest.skip("this tree's `ranker` has no `config` command (fleet config): admin acts per process")
    if not layout.sandbox:
        pytest.skip("no user namespaces here: the claim is not mounted read-only")
    response = httpx.post(f"{pod_server.url}/admin/variant", json={"variant": "uoi"}, timeout=30.0,
                          headers={"Authorization": f"Bearer {SECRET_PLACEHOLDER}"})
    assert response.status_code == 503, response.text  # config_not_written: the claim is mounted read-only
    assert fleet_config["file"].read_bytes() == fleet_config["bytes"]


def test_pod_exits_cleanly_on_sigterm_within_the_grace_period(base_render: Rendered, pod_server: PodServer) -> None:
    """Last in the module: stops the shared server, as the kubelet does after the preStop hook."""
    budget = base_render.pod["terminationGracePeriodSeconds"] - pre_stop_sleep_s(base_render.container)
    start = time.monotonic()
    pod_server.process.send_signal(signal.SIGTERM)
    assert pod_server.process.wait(budget) in (0, -signal.SIGTERM), pod_server.log()
    assert time.monotonic() - start < budget
    assert "Application shutdown complete" in pod_server.log(), pod_server.log()
