"""Where a request's time goes outside the model: one `ranker serve`, sequential requests, Server-Timing per stage.

    python -m bench.overhead --model model_store/default [--requests 60] [--out docs/peers.md]

The server runs as shipped (one worker, one torch thread, every other setting its default: compile=auto, the
columnar fast path). Per case (POST /rank columnar at N = 100 and 1000, row-wise at 1000, and the Open Inference
Protocol's binary tensor door at 1000) it sends warm-up requests, then `--requests` sequential ones, and reports
the medians of each Server-Timing stage (queue, decode, encode, infer, respond, total), the decode + encode share
of the server's time, the time outside the model (total - infer), and the client's round trip. A GET /healthz
round trip is the client + HTTP floor for reference. The table is written between markers in --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import torch

from loadtest.run import Server
from service.features.schema import FeatureSchema
from service.serving.example_request import example_request
from service.store.artifact import read_manifest
from service.store.versions import resolve_version

TIMING = re.compile(r"(\w+);dur=([0-9.]+)")
STAGES = ("queue", "decode", "encode", "infer", "respond", "total")
MARK_BEGIN, MARK_END = "<!-- overhead:begin (bench/overhead.py) -->", "<!-- overhead:end -->"
BODIES = 8  # different requests per case, sent in turn
WARMUP = 10


def cases(schema: FeatureSchema, model: str) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(name, path, body, headers) per case; the V2 body is what tritonclient sends (binary tensor extension)."""
    from tests.api.v2_requests import feature_arrays, infer_inputs, request_body

    found = []
    for name, n, columnar in (("/rank JSON columnar", 100, True), ("/rank JSON columnar", 1000, True),
                              ("/rank JSON row-wise", 1000, False)):
        for seed in range(BODIES):
            body = json.dumps(example_request(schema, n=n, columnar=columnar, seed=seed)).encode()
            found.append((f"{name}, N = {n}", "/rank", body, {"Content-Type": "application/json"}))
    for seed in range(BODIES):
        request = example_request(schema, n=1000, columnar=True, seed=seed)
        body, json_size = request_body(infer_inputs(schema, feature_arrays(schema, request)),
                                       user_id=request["user_id"])
        headers = {"Inference-Header-Content-Length": str(json_size)} if json_size is not None else {}
        found.append(("V2 binary tensors, N = 1000", f"/v2/models/{model}/infer", body, headers))
    return found


def measure(url: str, found: list[tuple[str, str, bytes, dict[str, str]]], requests: int) -> list[dict[str, Any]]:
    rows = []
    with httpx.Client(timeout=30.0) as client:
        floor = []
        for _ in range(requests):
            started = time.perf_counter()
            client.get(f"{url}/healthz").raise_for_status()
            floor.append((time.perf_counter() - started) * 1e3)
        for case in dict.fromkeys(name for name, *_ in found):
            bodies = [(path, body, headers) for name, path, body, headers in found if name == case]
            stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
            client_ms = []
            for i in range(WARMUP + requests):
                path, body, headers = bodies[i % len(bodies)]
                started = time.perf_counter()
                response = client.post(f"{url}{path}", content=body, headers=headers)
                elapsed = (time.perf_counter() - started) * 1e3
                if response.status_code != 200:
                    raise SystemExit(f"{case}: {response.status_code} {response.text[:300]}")
                if i < WARMUP:
                    continue
                client_ms.append(elapsed)
                timing = dict(TIMING.findall(response.headers["server-timing"]))
                for stage in STAGES:
                    stages[stage].append(float(timing[stage]))
            med = {stage: round(statistics.median(values), 3) for stage, values in stages.items()}
            codec_share = statistics.median((d + e) / t for d, e, t in zip(stages["decode"], stages["encode"],
                                                                          stages["total"]))
            rows.append({"case": case, **{f"{s}_ms": v for s, v in med.items()},
                         "decode_encode_share": round(codec_share, 3),
                         "outside_model_ms": round(statistics.median(
                             t - i for t, i in zip(stages["total"], stages["infer"])), 3),
                         "client_ms": round(statistics.median(client_ms), 3),
                         "healthz_round_trip_ms": round(statistics.median(floor), 3)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(result: dict[str, Any]) -> str:
    header = ["case", "decode ms", "encode ms", "infer ms", "respond ms", "queue ms", "server total ms",
              "decode+encode share", "outside the model ms", "client round trip ms"]
    lines = [MARK_BEGIN, "", f"    {result['command']}", "",
             f"{result['machine']}; {result['date']}; ready {result['ready_s']} s after start; compile: "
             f"`{result['compile']}`.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result["rows"]:
        lines.append(f"| {row['case']} | {row['decode_ms']} | {row['encode_ms']} | {row['infer_ms']} | "
                     f"{row['respond_ms']} | {row['queue_ms']} | {row['total_ms']} | "
                     f"{row['decode_encode_share'] * 100:.1f}% | {row['outside_model_ms']} | {row['client_ms']} |")
    lines += ["", f"A GET /healthz round trip with the same client: {result['rows'][0]['healthz_round_trip_ms']} ms "
              "(the client and HTTP floor).", "", MARK_END]
    return "\n".join(lines)


def write_markdown(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else ""
    if MARK_BEGIN in text and MARK_END in text:
        text = text[:text.index(MARK_BEGIN)] + block + text[text.index(MARK_END) + len(MARK_END):]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + "## Where the time goes outside the model\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("model_store/default"))
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write the table into")
    parser.add_argument("--ready-timeout-s", type=float, default=600.0)
    parser.add_argument("--compile-cache-dir", type=Path, default=None,
                        help="RANKER_COMPILE_CACHE_DIR of the server (a fresh folder: a cold compile)")
    args = parser.parse_args(argv)
    manifest = read_manifest(resolve_version(args.model))
    schema = FeatureSchema.from_dict(manifest.feature_schema)
    server_env = [f"RANKER_COMPILE_CACHE_DIR={args.compile_cache_dir}"] if args.compile_cache_dir else []
    server_args = argparse.Namespace(model=args.model, torch_threads=1, workers=1,
                                     ready_timeout_s=args.ready_timeout_s, server_env=server_env)
    log = Path("/tmp") / f"bench-overhead-{time.time_ns()}.log"
    started = time.perf_counter()
    with Server("mari", server_args, log) as server:
        ready_s = time.perf_counter() - started
        compile_report = httpx.get(f"{server.url}/v1/models", timeout=10.0).json().get("compile")
        print(f"ready in {ready_s:.1f} s; compile: {json.dumps(compile_report)}", flush=True)
        rows = measure(server.url, cases(schema, manifest.name), args.requests)
    result = {"command": "python -m bench.overhead " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.node()}, {torch.get_num_threads()} cores visible to torch, torch "
                         f"{torch.__version__}, 1 worker x 1 torch thread",
              "date": datetime.now(UTC).isoformat(timespec="minutes"),
              "compile": json.dumps(compile_report), "ready_s": round(ready_s, 1), "rows": rows}
    if args.out:
        write_markdown(args.out, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
