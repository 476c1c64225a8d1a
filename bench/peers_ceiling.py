"""bench.peers' model-only ceiling: this service's MaRI variant alone, no HTTP and no JSON; prints one JSON line.

    RANKER_MODEL_STORE=... RANKER_MODEL_NAME=... python -m bench.peers_ceiling --model <version folder> --seconds 5

Run by bench.peers as a server would be: its own process, the RANKER_* settings of the "mari" server (same
build, compile mode, torch threads), pinned to the servers' core. The model is built by the server's own
build (service.serving.loading.build_serving_model); the small mix's bodies (bench.capacity, same seed, made
columnar as bench.peers sends them) are decoded and encoded by its codec beforehand; the MaRI variant is
then called back to back (ServingModel.score, what a server's inference slot calls) for --seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.capacity import build_mixes
from bench.peers_servers import columnar
from service.engine import Variant
from service.serving.loading import build_serving_model
from service.serving.settings import Settings
from service.store.versions import resolve_version

MIX = "small"


def measure(model: Path, seconds: float, seed: int, bodies: int) -> dict[str, object]:
    settings = Settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    serving = build_serving_model(settings, resolve_version(model))
    schema = serving.codec.schema
    pool = [columnar(body, schema) for body in build_mixes(model, [MIX], seed, bodies)[MIX]]
    requests = [(serving.codec.encode(serving.codec.decode(body.payload)).features, body.n) for body in pool]
    for features, _ in requests:  # warm-up: one pass
        serving.score(Variant.MARI, features)
    count, candidates, started = 0, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        features, n = requests[count % len(requests)]
        serving.score(Variant.MARI, features)
        count, candidates = count + 1, candidates + n
    return {"requests_per_s": round(count / elapsed, 2), "candidates_per_s": round(candidates / elapsed),
            "requests": count, "seconds": round(elapsed, 2), "mix": MIX, "torch_threads": torch.get_num_threads(),
            "compile": settings.compile, "runs_as": serving.statuses[Variant.MARI].runs_as.value}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers_ceiling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bodies", type=int, default=64)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.model, args.seconds, args.seed, args.bodies)), flush=True)


if __name__ == "__main__":
    main()
