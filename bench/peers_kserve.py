"""KServe's Python model server around the eager model (bench.peers' "kserve"); runs from .venv-peers only.

    make peers    # once: .venv-peers with kserve (the `peers` extra) and the same torch build
    .venv-peers/bin/python -m bench.peers_kserve --model model_store/default --http_port 8200 --threads 1

A `kserve.Model` whose `load()` builds the eager module (bench.peers_models) and whose `predict` takes an
Open Inference Protocol (V2) request with one named input tensor per feature (user features [1, ...],
candidate features [N, ...], id sequences right-padded to the model's length), tiles the user tensors to N,
runs the module under torch.no_grad() and answers one FP32 output per task, served by
`kserve.ModelServer(workers=1).start([model])` as KServe's docs show, at POST /v2/models/<name>/infer.

Two settings differ from KServe's defaults, for the same treatment as the other servers of bench.peers: no gRPC
server (the benchmark speaks REST; one port to find) and warning-level logs without per-request latency lines
(the other servers log at warning level and write no access log either).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server

from bench.peers_models import EagerModel, load_eager

MODEL_NAME = "ranker"
QUIET_LOGGERS = ("kserve", "kserve.trace", "uvicorn", "uvicorn.access", "uvicorn.error")


class EagerRanker(Model):
    def __init__(self, name: str, model_path: str) -> None:
        super().__init__(name)
        self.model_path = model_path
        self.eager: EagerModel | None = None
        self.users: set[str] = set()

    def load(self) -> bool:
        self.eager = load_eager(self.model_path)
        self.users = set(self.eager.user_features)
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                response_headers: dict[str, str] | None = None) -> InferResponse:
        assert self.eager is not None, "predict before load"
        tensors = {tensor.name: torch.from_numpy(tensor.as_numpy()) for tensor in payload.inputs}
        n = max(value.size(0) for name, value in tensors.items() if name not in self.users)
        features = {name: value.expand(n, *value.shape[1:]) if name in self.users else value
                    for name, value in tensors.items()}
        with torch.no_grad():
            scores = self.eager.module(features)
        outputs = [InferOutput(name=task, shape=[n], datatype="FP32", data=scores[task].numpy())
                   for task in self.eager.tasks]
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers_kserve", parents=[model_server.parser],
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a version folder or a model folder (latest version)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args: Any = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = EagerRanker(MODEL_NAME, args.model)
    model.load()
    server = ModelServer(http_port=args.http_port, workers=1, enable_grpc=False, enable_latency_logging=False)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
