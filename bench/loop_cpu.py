"""The event loop's CPU per POST /rank, with the scoring routes' short way (service/api/scoring_path.py) and
without it (FastAPI's routing and request handler), in one process, interleaved, on the same requests.

    python -m bench.loop_cpu --model model_store/default [--rounds 9] [--requests 300]

Why this measure: on a small request the event loop is the bottleneck beside the model (docs/peers.md), and
its share is hard to see in an end-to-end capacity sweep on a noisy 2-core box. Here two apps on the same
stored model (compile off, MaRI, 1 torch thread) answer the same bodies (N 50-200, the small mix's sizes)
through raw ASGI calls, no sockets; `time.thread_time()` of the loop's thread counts its CPU only (decode and
the response body of these small requests run on the loop; the model on the inference thread is not counted).
Rounds alternate between the two apps after a warm-up; the medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from contextlib import AsyncExitStack
from pathlib import Path

import torch
from fastapi import FastAPI
from starlette.types import Message, Scope

from service.api.app import create_app
from service.api.scoring_path import ScoringPath
from service.engine import Variant
from service.serving.example_request import example_request
from service.serving.settings import Settings


def apps(model: Path) -> dict[str, FastAPI]:
    settings = Settings(model_store=model.parent, model_name=model.name, compile="off", torch_threads=1,
                        warmup_candidates=(1, 100), variant=Variant.MARI, config_poll_s=0)
    routed = create_app(settings)
    routed.user_middleware = [m for m in routed.user_middleware
                              if not (isinstance(m.cls, type) and issubclass(m.cls, ScoringPath))]
    return {"scoring path": create_app(settings), "FastAPI routes": routed}


async def post(app: FastAPI, body: bytes) -> None:
    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/rank", "raw_path": b"/rank", "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }
    delivered = False
    statuses: list[int] = []

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    if statuses != [200]:
        raise SystemExit(f"POST /rank answered {statuses}")


async def measure(found: dict[str, FastAPI], rounds: int, requests: int) -> dict[str, list[float]]:
    async with AsyncExitStack() as stack:
        for app in found.values():
            await stack.enter_async_context(app.router.lifespan_context(app))
        schema = next(iter(found.values())).state.service.runtime.serving.codec.schema
        sizes = random.Random(0)
        bodies = [json.dumps(example_request(schema, n=sizes.randint(50, 200), seed=i)).encode() for i in range(32)]
        for app in found.values():  # warm-up: first calls, caches, allocator
            for i in range(100):
                await post(app, bodies[i % len(bodies)])
        per_request: dict[str, list[float]] = {name: [] for name in found}
        for _ in range(rounds):
            for name, app in found.items():
                started = time.thread_time()
                for i in range(requests):
                    await post(app, bodies[i % len(bodies)])
                per_request[name].append((time.thread_time() - started) / requests * 1e3)
        return per_request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("model_store/default"))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=300, help="per round and app")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    per_request = asyncio.run(measure(apps(args.model), args.rounds, args.requests))
    medians = {name: statistics.median(values) for name, values in per_request.items()}
    for name, values in per_request.items():
        print(f"{name}: event-loop CPU per request, median {medians[name]:.3f} ms "
              f"(rounds: {', '.join(f'{v:.3f}' for v in values)})")
    short, routed = medians["scoring path"], medians["FastAPI routes"]
    print(f"scoring path / FastAPI routes: {short / routed:.3f} ({routed - short:.3f} ms less per request)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
