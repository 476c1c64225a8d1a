"""The request mix of the load test: pre-generated POST /rank bodies for a population of users.

- one body per population user (user_id `lt-user-<i>`), with its own user features and candidate set drawn
  like the model's training data (service.serving.example_request, from the model's feature schema);
- N per body from a log-normal law clipped to [n_min, n_max]: many small requests and a heavy tail;
- a `columnar_share` fraction of the bodies in the columnar form, the rest row-wise;
- deterministic in the seed, and saved as JSON-encoded bytes, so every variant gets byte-identical traffic.

No locust import here: the runner builds the pool once (`build_pool` + `save_pool`) and each locust process
only reads the file (`load_pool`), with neither torch nor JSON encoding on the load generator's clock.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHAPES = ("rows", "columnar")


@dataclass(frozen=True)
class TrafficMix:
    """How the body pool is drawn; every field is a runner/locust option of the same name."""

    bodies: int = 64  # = users in the population
    n_min: int = 100
    n_max: int = 3000
    n_median: float = 300.0  # of the log-normal before clipping
    n_sigma: float = 0.9  # log-normal shape: larger, heavier tail
    columnar_share: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bodies < 1 or not 1 <= self.n_min <= self.n_max or self.n_median <= 0 or self.n_sigma < 0:
            raise ValueError(f"need bodies >= 1, 1 <= n_min <= n_max, n_median > 0, n_sigma >= 0; got {self}")
        if not 0.0 <= self.columnar_share <= 1.0:
            raise ValueError(f"columnar_share must be in [0, 1], got {self.columnar_share}")


@dataclass(frozen=True)
class Body:
    user_id: str
    n: int  # candidates
    shape: str  # one of SHAPES
    payload: bytes  # the JSON body, sent as is


def draw_n(rng: random.Random, mix: TrafficMix) -> int:
    """One N from log-normal(ln n_median, n_sigma), clipped to [n_min, n_max]."""
    return int(min(mix.n_max, max(mix.n_min, round(rng.lognormvariate(math.log(mix.n_median), mix.n_sigma)))))


def build_pool(model_path: Path | str, mix: TrafficMix) -> list[Body]:
    """mix.bodies request bodies for the schema of the model at model_path."""
    # torch and the service: imported only here, not by locust processes that read a saved pool
    from service.features.schema import FeatureSchema
    from service.serving.example_request import example_request
    from service.store.artifact import read_manifest
    from service.store.versions import resolve_version

    schema = FeatureSchema.from_dict(read_manifest(resolve_version(Path(model_path))).feature_schema)
    rng = random.Random(mix.seed)
    pool = []
    for i in range(mix.bodies):
        n = draw_n(rng, mix)
        shape = "columnar" if rng.random() < mix.columnar_share else "rows"
        request = example_request(schema, n=n, columnar=shape == "columnar", seed=mix.seed * 100_003 + i)
        request["user_id"] = f"lt-user-{i}"
        request["request_id"] = f"lt-{i}"  # echoed and logged; constant per body, so not unique per request
        pool.append(Body(request["user_id"], n, shape, json.dumps(request, separators=(",", ":")).encode()))
    return pool


def save_pool(pool: list[Body], path: Path) -> None:
    """One line per body: metadata JSON, a tab, the body JSON (compact JSON holds no raw tab or newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for body in pool:
            meta = json.dumps({"user_id": body.user_id, "n": body.n, "shape": body.shape}).encode()
            handle.write(meta + b"\t" + body.payload + b"\n")


def load_pool(path: Path) -> list[Body]:
    pool = []
    with open(path, "rb") as handle:
        for line in handle:
            meta, payload = line.rstrip(b"\n").split(b"\t", 1)
            fields = json.loads(meta)
            pool.append(Body(fields["user_id"], int(fields["n"]), fields["shape"], payload))
    if not pool:
        raise ValueError(f"{path}: no bodies")
    return pool


def describe_pool(pool: list[Body]) -> dict[str, Any]:
    """What the report says about the request mix: population, N distribution, shapes, body size."""
    ns = sorted(body.n for body in pool)
    if not ns:
        return {"bodies": 0}
    return {
        "bodies": len(ns),
        "users": len({body.user_id for body in pool}),
        "columnar": sum(body.shape == "columnar" for body in pool),
        "n_min": ns[0],
        "n_median": statistics.median(ns),
        "n_mean": round(statistics.fmean(ns), 1),
        "n_p95": ns[min(len(ns) - 1, math.ceil(0.95 * len(ns)) - 1)],
        "n_max": ns[-1],
        "mean_body_kib": round(statistics.fmean(len(body.payload) for body in pool) / 1024, 1),
    }
