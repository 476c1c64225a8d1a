"""The image, built with podman and run: what a new user of the Dockerfile gets (`make image-test`, issue 18).

Not part of `make test`: pytest collects this file only when it is named on the command line (it is not
test_*.py). Needs root, podman + runc and the base image (`make image-test` runs deploy/image/podman_setup.sh
and base_image.sh first). The Dockerfile is built as written, with build arguments only: the base image, torch
2.13.0+cpu from a local wheel directory, a short training of the default model ("--steps 20": the image is
checked here, not the model). Containers use the host network on a free 127.0.0.1 port (RANKER_HOST,
RANKER_PORT): port forwarding needs iptables rules a CI container may not allow, and is podman's, not ours.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.processes import start, stop, wait_ok
from tests.image.podman import Container, build, podman, run_container, stub_cuda_torch_wheel, wheel_dir
from tests.ports import free_port

IMAGE = "localhost/mari-serve:image-test"
LOADTEST_IMAGE = "localhost/mari-serve-loadtest:image-test"
STUB_IMAGE = "localhost/mari-serve-cuda-stub:image-test"
TRAIN_ARGS = "--steps 20"
IMAGE_UID = 10001  # the Dockerfile's `ranker` user
SIZE_TARGET_BYTES = 2_000_000_000  # issue 18: the runtime image at most 2 GB
SCORE_TOLERANCE = 1e-6  # the same program, weights and torch build on the same CPU, one thread each
# Built images stay (tagged *:image-test; `podman rmi` them), as does the build cache: a rerun builds from cache.
# The serving settings both the container and the host server get: no start-up compile (inductor's minutes are
# not what is checked here), one torch thread, a light warm-up, and one named variant: the `auto` default picks
# a form by timing it at start-up, so two servers could pick different (equivalent) forms, and what is compared
# is the same program inside and outside the image.
SERVING_ENV = {"RANKER_COMPILE": "off", "RANKER_TORCH_THREADS": "1", "RANKER_WARMUP_CANDIDATES": "[1, 16]",
               "RANKER_ANALYSIS_CANDIDATES": "100", "RANKER_VARIANT": "mari"}
STOP_TIMEOUT_S = 60  # podman stop's grace before SIGKILL: above drain (5 s) + graceful shutdown (30 s)
LOAD_CLIENTS = 2
PROBE_INTERVAL_S = 1.0  # a load balancer's readiness probe period, below the image's 5 s drain delay
TORCHREC_CASE = "torchrec/dlrm"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image")


@pytest.fixture(scope="module")
def image(workdir: Path) -> str:
    result = build("runtime", IMAGE, workdir / "build-runtime.log", wheel_dir(), TRAIN_ARGS=TRAIN_ARGS)
    assert result.returncode == 0, (workdir / "build-runtime.log").read_text()[-6000:]
    return IMAGE


@pytest.fixture(scope="module")
def image_store(image: str, workdir: Path) -> Path:
    """The image's own model store, copied out: the host server serves the very same artifact. (`podman cp`
    from a created container copies nothing here: /app/model_store is a VOLUME, mounted only once it runs.)"""
    store = workdir / "model_store"
    store.mkdir()
    podman("run", "--rm", "--user", "0", "--network", "none", "-v", f"{store}:/out", image,
           "cp", "-R", "/app/model_store/.", "/out/", timeout=300)
    assert (store / "default").is_dir(), f"nothing copied out of the image: {list(store.iterdir())}"
    store.chmod(0o755)  # mounted into the loadtest container, whose user is not root
    return store


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[Container]:
    served = run_container("mari-image-test", image, SERVING_ENV)
    yield served
    subprocess.run(["podman", "rm", "-f", "-v", served.name], capture_output=True)


def rank_body(store: Path, name: str, n: int, seed: int) -> dict:
    from service.serving.example_request import example_request_for_store

    return example_request_for_store(store / name, n=n, columnar=True, seed=seed)


# ---------------------------------------------------------------- checks


def test_the_build_refuses_a_cuda_torch(workdir: Path) -> None:
    """torch 2.13.0+cu130 (a stub wheel with torch.version.cuda set) stops the build at the CPU check."""
    stub_dir = workdir / "cuda-stub-wheels"
    stub_dir.mkdir()
    stub_cuda_torch_wheel(stub_dir)
    log = workdir / "build-cuda-stub.log"
    result = build("builder", STUB_IMAGE, log, stub_dir, TORCH_VERSION="2.13.0+cu130",
                   TORCH_PIP_ARGS="--no-index --find-links /wheels")
    text = log.read_text()
    assert result.returncode != 0, f"the build accepted a CUDA torch: {text[-3000:]}"
    # the version the check names is read from the installed torch: the stub (its layer may come from the cache)
    assert "check_cpu_torch: torch 2.13.0+cu130 is a CUDA build" in text, text[-3000:]


def test_runtime_image_is_at_most_2_gb(image: str) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image))
    print(f"\nimage {image}: {size / 1e9:.2f} GB ({size} bytes)")
    assert size <= SIZE_TARGET_BYTES, f"{size / 1e9:.2f} GB"


def test_the_image_holds_a_cpu_torch_and_fbgemm(image: str) -> None:
    out = podman("run", "--rm", "--network", "none", image, "python", "-c",
                 "import torch, fbgemm_gpu; print(torch.__version__, torch.version.cuda, "
                 "hasattr(torch.ops.fbgemm, 'jagged_to_padded_dense'))", timeout=300)
    assert out.splitlines()[-1] == "2.13.0+cpu None True", out


def test_the_server_runs_as_the_non_root_image_user(container: Container) -> None:
    status = podman("exec", container.name, "cat", "/proc/1/status")
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == [str(IMAGE_UID)] * 4, f"PID 1 uids (real, effective, saved, fs): {uids}"
    cmdline = podman("exec", container.name, "cat", "/proc/1/cmdline").replace("\0", " ")
    assert "ranker serve" in cmdline, f"PID 1 is {cmdline!r}: SIGTERM would not reach the server"


def test_rank_in_the_container_equals_ranker_serve_outside(container: Container, image_store: Path,
                                                          workdir: Path) -> None:
    bodies = [rank_body(image_store, "default", n, seed) for seed, n in enumerate((1, 37, 1000))]
    inside = [httpx.post(f"{container.url}/rank", json=body, timeout=60.0) for body in bodies]
    assert [response.status_code for response in inside] == [200] * 3, [r.text[:300] for r in inside]

    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RANKER_")}
    env |= SERVING_ENV | {"RANKER_MODEL_STORE": str(image_store), "RANKER_MODEL_NAME": "default"}
    log = workdir / "host-ranker.log"
    ranker = start([str(Path(sys.executable).parent / "ranker"), "serve", "--host", "127.0.0.1", "--port",
                    str(port)], env, log)
    try:
        wait_ok(f"http://127.0.0.1:{port}/readyz", ranker, log)
        outside = [httpx.post(f"http://127.0.0.1:{port}/rank", json=body, timeout=60.0) for body in bodies]
    finally:
        stop(ranker)
    assert [response.status_code for response in outside] == [200] * 3
    for body, there, here in zip(bodies, inside, outside):
        a, b = there.json(), here.json()
        assert (a["model"], a["variant"]) == (b["model"], b["variant"])
        assert len(a["final_scores"]) == len(body["candidates"]["item_id"])
        largest = max(abs(x - y) for x, y in zip(a["final_scores"], b["final_scores"]))
        assert largest <= SCORE_TOLERANCE, f"container and host differ by {largest}"


def test_metrics_count_the_containers_requests(container: Container) -> None:
    body = httpx.get(f"{container.url}/metrics", timeout=10.0)
    assert body.status_code == 200 and body.headers["content-type"].startswith("text/plain")
    ok = [line for line in body.text.splitlines()
          if line.startswith("ranker_requests_total{") and 'status="200"' in line]
    assert ok and sum(float(line.rsplit(" ", 1)[1]) for line in ok) >= 3, ok


def test_a_packaged_torchrec_model_serves_from_a_mounted_store(image: str, workdir: Path) -> None:
    """Packaged on the host (torchrec itself is not in the image), served by the image from a read-only mount.
    These torchrec models export to plain ATen; a program with torchrec's jagged fbgemm operators needs the
    image's fbgemm-gpu-cpu, checked above."""
    import torch

    from service.store import package
    from tests.store.test_package_conventions import CONVENTIONS

    convention = CONVENTIONS[TORCHREC_CASE]()
    store = workdir / "torchrec_store"
    package(convention.model, convention.schema.example_batch(8, torch.Generator().manual_seed(5)),
            convention.schema, tasks=["score"], store=store, name="dlrm")
    store.chmod(0o755)  # the mount's root: readable by the image's uid (the artifact's own modes already are)
    served = run_container("mari-image-test-torchrec", image,
                           SERVING_ENV | {"RANKER_MODEL_STORE": "/models", "RANKER_MODEL_NAME": "dlrm"},
                           volumes=(f"{store}:/models:ro",))
    try:
        response = httpx.post(f"{served.url}/rank", json=rank_body(store, "dlrm", 25, 3), timeout=60.0)
        assert response.status_code == 200, response.text[:500]
        scores = response.json()["final_scores"]
        assert len(scores) == 25 and all(0.0 <= score <= 1.0 for score in scores), scores
        assert response.headers["x-model-name"] == "dlrm"
    finally:
        subprocess.run(["podman", "rm", "-f", "-v", served.name], capture_output=True)


def test_the_loadtest_image_runs_headless_locust_against_the_container(container: Container, image_store: Path,
                                                                       workdir: Path) -> None:
    log = workdir / "build-loadtest.log"
    result = build("loadtest", LOADTEST_IMAGE, log, wheel_dir(), TRAIN_ARGS=TRAIN_ARGS)
    assert result.returncode == 0, log.read_text()[-6000:]
    before = _ok_requests(container)
    run = subprocess.run(
        ["podman", "run", "--rm", "--network", "host", "-v", f"{image_store}:/app/model_store:ro", LOADTEST_IMAGE,
         "-f", "/app/loadtest/locustfile.py", "--headless", "--users", "2", "--spawn-rate", "2", "--run-time", "8s",
         "--host", container.url, "--model-path", "/app/model_store/default", "--only-summary"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    served = _ok_requests(container) - before
    assert served > 0, "locust sent no request the server answered 200"
    print(f"\nlocust (2 users, 8 s): {served:.0f} requests answered 200, none failed")


def test_podman_stop_drains_with_zero_failed_requests(container: Container, image_store: Path) -> None:
    """Clients keep ranking through `podman stop` the way they do behind a load balancer: they send until a
    /readyz probe (every PROBE_INTERVAL_S) sees the replica draining, well within its drain delay (5 s). Every
    request gets a 200, some of them after the stop began, and the server exits 0 (drained, not killed).

    A client that ignores /readyz and sends until the listener closes can meet a reset: a connection still in
    the kernel's accept queue when the listener closes gets one. That is what the drain delay and the probe
    are for, so the client here honours them."""
    request = rank_body(image_store, "default", 200, 7)
    outcomes: list[str] = []
    stop_sent, routed_away = threading.Event(), threading.Event()
    answered_after_stop = [0]

    def probe() -> None:
        while not routed_away.is_set():
            try:
                ready = httpx.get(f"{container.url}/readyz", timeout=2.0).status_code == 200
            except httpx.HTTPError:
                ready = False
            if not ready:
                routed_away.set()
            routed_away.wait(PROBE_INTERVAL_S)

    def client() -> None:
        with httpx.Client(timeout=60.0) as session:
            while not routed_away.is_set():
                try:
                    status = session.post(f"{container.url}/rank", json=request).status_code
                except httpx.HTTPError as error:
                    outcomes.append(f"failed: {type(error).__name__}: {error}")
                    return
                outcomes.append(str(status))
                if stop_sent.is_set() and status == 200:
                    answered_after_stop[0] += 1

    threads = [threading.Thread(target=probe)] + [threading.Thread(target=client) for _ in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    started = time.monotonic()
    stop_sent.set()
    try:
        podman("stop", "--time", str(STOP_TIMEOUT_S), container.name, timeout=STOP_TIMEOUT_S + 30)
    finally:
        routed_away.set()  # bounds the threads whatever happened
    stopped_in = time.monotonic() - started
    for thread in threads:
        thread.join(60)
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", container.name)
    print(f"\npodman stop: {stopped_in:.1f} s, {outcomes.count('200')} requests answered 200, "
          f"{answered_after_stop[0]} of them after the stop began")
    assert not any(thread.is_alive() for thread in threads)
    assert set(outcomes) == {"200"}, [outcome for outcome in outcomes if outcome != "200"]
    assert answered_after_stop[0] > 0, "nothing was served once the stop began"
    assert exit_code == "0", f"exit code {exit_code} (137: killed, not drained): {container.logs()}"
    assert "SIGTERM: draining" in container.logs(), container.logs()


def _ok_requests(container: Container) -> float:
    text = httpx.get(f"{container.url}/metrics", timeout=10.0).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ranker_requests_total{") and 'status="200"' in line)
