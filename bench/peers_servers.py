"""bench.peers' servers: how each is started, what it is sent, what a right answer is, and its CPU time.

- ours: `ranker serve` (loadtest.run.Server), POST /rank with the pool's JSON as it is;
- plain: bench/peers_plain_app.py from .venv, POST /rank with the same JSON (every body columnar);
- kserve: bench/peers_kserve.py from .venv-peers, POST /v2/models/ranker/infer with an Open Inference Protocol
  JSON body per pool body (one tensor per feature), built once before any load.

Every server runs one worker and one torch thread; with `cpu` set, it runs pinned to that core (`taskset`),
children included, so no server can take more of the machine than another (ours overlaps decoding with
inference on two threads, the plain app scores in a thread pool): the load generator has the other cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from bench.capacity import Target, rank_target
from loadtest.run import HOST, REPO_ROOT, SERVER_ENV_PREFIXES, RunError, Server, free_port
from loadtest.traffic import Body
from service.features.schema import FeatureSchema, FeatureSpec, Kind

PEERS_PYTHON = REPO_ROOT / ".venv-peers" / "bin" / "python"
KSERVE_MODEL = "ranker"  # bench.peers_kserve.MODEL_NAME (not imported: kserve is not installed in .venv)
KSERVE_INFER = f"/v2/models/{KSERVE_MODEL}/infer"
V2_DATATYPES = {Kind.DENSE: "FP32", Kind.SPARSE_ID: "INT64", Kind.ID_SEQUENCE: "INT64"}


class PeerServer(Server):
    """A peer's server process, started, awaited and stopped like `ranker serve` (loadtest.run.Server)."""

    def __init__(self, name: str, command: list[str], ready_path: str, port: int, log_path: Path,
                 ready_timeout_s: float) -> None:
        self.variant, self.port, self.url = name, port, f"http://{HOST}:{port}"
        self.log_path, self.ready_timeout_s, self.ready_path = log_path, ready_timeout_s, ready_path
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(SERVER_ENV_PREFIXES)}
        self.env = {**inherited, "PYTHONPATH": str(REPO_ROOT)}
        self.command, self.process = command, None


def pinned(command: list[str], cpu: int | None) -> list[str]:
    return command if cpu is None else ["taskset", "-c", str(cpu), *command]


def start_plain(model: Path, threads: int, cpu: int | None, log: Path, ready_timeout_s: float) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "bench.peers_plain_app", "--model", str(model),
               "--host", HOST, "--port", str(port), "--threads", str(threads)]
    return PeerServer("plain", pinned(command, cpu), "/healthz", port, log, ready_timeout_s)


def start_kserve(model: Path, threads: int, cpu: int | None, log: Path, ready_timeout_s: float) -> Server:
    if not PEERS_PYTHON.exists():
        raise RunError(f"no {PEERS_PYTHON}: `make peers` installs KServe there (it is never in .venv)")
    port = free_port()
    command = [str(PEERS_PYTHON), "-m", "bench.peers_kserve", "--model", str(model), "--http_port", str(port),
               "--threads", str(threads)]
    return PeerServer("kserve", pinned(command, cpu), f"/v2/models/{KSERVE_MODEL}/ready", port, log,
                      ready_timeout_s)


def start_ours(variant: str, env: list[str], model: Path, threads: int, cpu: int | None, log: Path,
               ready_timeout_s: float) -> Server:
    args = argparse.Namespace(model=model, torch_threads=threads, workers=1, ready_timeout_s=ready_timeout_s,
                              server_env=env)
    server = Server(variant, args, log)
    server.command = pinned(server.command, cpu)
    return server


# --- what each server is sent, and what a right answer is ----------------------------------------------------

def columnar(body: Body, schema: FeatureSchema) -> Body:
    """A row-wise /rank body as the same request in the columnar form (the plain app takes only that one)."""
    if body.shape == "columnar":
        return body
    request = json.loads(body.payload)
    rows = request["candidates"]
    request["candidates"] = {spec.name: [row[spec.name] for row in rows] for spec in schema.candidate_features}
    return replace(body, shape="columnar", payload=json.dumps(request, separators=(",", ":")).encode())


def v2_input(spec: FeatureSpec, values: list[Any]) -> dict[str, Any]:
    """One V2 input tensor, data flattened row-major; id sequences right-padded with 0 to the model's length."""
    if spec.kind is Kind.DENSE:
        shape, data = [len(values), spec.dim], [x for row in values for x in row]
    elif spec.kind is Kind.ID_SEQUENCE:
        shape = [len(values), spec.max_len]
        data = [i for ids in values for i in (list(ids[:spec.max_len]) + [0] * (spec.max_len - len(ids)))]
    else:
        shape, data = [len(values)], list(values)
    return {"name": spec.name, "shape": shape, "datatype": V2_DATATYPES[spec.kind], "data": data}


def v2_request(schema: FeatureSchema) -> Callable[[Body], bytes]:
    """Columnar /rank JSON -> an Open Inference Protocol request: user tensors [1, ...], candidates [N, ...]."""
    specs = {spec.name: spec for spec in schema.features}

    def encode(body: Body) -> bytes:
        request = json.loads(body.payload)
        inputs = [v2_input(specs[name], [value]) for name, value in request["user"].items()]
        inputs += [v2_input(specs[name], values) for name, values in request["candidates"].items()]
        return json.dumps({"id": request.get("request_id", ""), "inputs": inputs}, separators=(",", ":")).encode()

    return encode


def plain_target(tasks: list[str]) -> Target:
    def check(response: httpx.Response, body: Body) -> str:
        scores = json.loads(response.content).get("scores", {})
        ok = list(scores) == tasks and all(len(values) == body.n for values in scores.values())
        return "" if ok else "wrong answer"

    return Target("/rank", check)


def kserve_target(tasks: list[str], schema: FeatureSchema) -> Target:
    def check(response: httpx.Response, body: Body) -> str:
        outputs = json.loads(response.content).get("outputs", [])
        ok = [output["name"] for output in outputs] == tasks and all(
            output["shape"] == [body.n] and len(output["data"]) == body.n for output in outputs)
        return "" if ok else "wrong answer"

    return Target(KSERVE_INFER, check, encode=v2_request(schema))


def target_for(server: str, variant: str | None, tasks: list[str], schema: FeatureSchema) -> Target:
    if server == "plain":
        return plain_target(tasks)
    if server == "kserve":
        return kserve_target(tasks, schema)
    assert variant is not None
    return rank_target(variant)


# --- CPU time ------------------------------------------------------------------------------------------------

def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and every live descendant, with the time of their reaped children
    (cutime + cstime): what the server has burnt so far, whichever of its processes did it."""
    ticks, total, stack = os.sysconf("SC_CLK_TCK"), 0, [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited meanwhile: its time is in its parent's cutime/cstime now
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime (stat fields 14-17)
        for task in tasks:
            try:
                stack += [int(child) for child in (task / "children").read_text().split()]
            except FileNotFoundError:
                continue
    return total / ticks
