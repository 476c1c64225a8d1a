"""The baseline a team writes in an afternoon: FastAPI + uvicorn around the eager model (bench.peers' "plain").

    python -m bench.peers_plain_app --model model_store/default --port 8100 --threads 1

POST /rank takes the service's columnar body ({"user_id", "user": {feature: value}, "candidates": {feature:
[value per candidate]}}), builds tensors with torch.tensor, tiles the user features to the N candidates, runs
the eager module under torch.no_grad() and answers {"scores": {task: [score per candidate]}}. Written the way
FastAPI's docs write it on purpose (a pydantic body, a plain `def` endpoint, a dict response), with no
validation beyond pydantic's and no admission control: it is the peer to beat, not a second service.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from bench.peers_models import EagerModel, load_eager
from service.features.schema import FeatureSpec, Kind


class RankRequest(BaseModel):
    user_id: str
    user: dict[str, Any]
    candidates: dict[str, list[Any]]


def to_tensor(spec: FeatureSpec, values: list[Any]) -> torch.Tensor:
    if spec.kind is Kind.DENSE:
        return torch.tensor(values, dtype=torch.float32)
    if spec.kind is Kind.ID_SEQUENCE:  # right-padded with 0 to the model's length
        values = [list(ids[:spec.max_len]) + [0] * (spec.max_len - len(ids)) for ids in values]
    return torch.tensor(values, dtype=torch.int64)


def create_app(eager: EagerModel) -> FastAPI:
    app = FastAPI(title="plain ranker")
    specs = {spec.name: spec for spec in eager.schema.features}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/rank")
    def rank(request: RankRequest) -> dict[str, Any]:
        n = len(next(iter(request.candidates.values())))
        features = {name: to_tensor(specs[name], values) for name, values in request.candidates.items()}
        for name, value in request.user.items():
            user = to_tensor(specs[name], [value])
            features[name] = user.expand(n, *user.shape[1:])  # the user's row, N times
        with torch.no_grad():
            scores = eager.module(features)
        return {"scores": {task: scores[task].tolist() for task in eager.tasks}}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers_plain_app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a version folder or a model folder (latest version)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    uvicorn.run(create_app(load_eager(args.model)), host=args.host, port=args.port, workers=1, log_level="warning")


if __name__ == "__main__":
    main()
