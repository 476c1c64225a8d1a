"""bench.peers: the plain app scores what the eager model and this service score, and a quick run of the command
(plain app and ours; KServe lives in .venv-peers, outside the test environment) reports every step.

No rate or latency is asserted: the runs share a busy 2-core box; the tests check the tools, not the servers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import torch

from bench.peers import main
from bench.peers_models import load_eager
from bench.peers_servers import start_ours, start_plain
from service.serving.codec import RequestCodec
from service.serving.example_request import example_request_for_store
from tests.conftest import SMALL_MODEL_NAME

TOLERANCE = 1e-4
SLO_MS = 2000.0  # loose: what is checked is that every step is reported, not how fast the servers are
# a short start-up (small warm-up, no compile) and a quick stop: the tests check the tools, not the service's speed
OURS_ENV = ["RANKER_WARMUP_CANDIDATES=[1,16]", "RANKER_COMPILE=off", "RANKER_DRAIN_DELAY_S=0"]


def test_plain_app_scores_equal_the_eager_model_and_this_services_rank(store: Path, tmp_path: Path) -> None:
    model = store / SMALL_MODEL_NAME / "v1"
    body = example_request_for_store(model, n=37, columnar=True, seed=5)
    with (start_plain(model, 1, None, tmp_path / "plain.log", 120.0) as plain,
          start_ours("mari", OURS_ENV, model, 1, None, tmp_path / "ours.log", 300.0) as ours):
        plain_scores = httpx.post(f"{plain.url}/rank", json=body, timeout=30.0).raise_for_status().json()["scores"]
        our_scores = httpx.post(f"{ours.url}/rank", json=body, timeout=30.0).raise_for_status().json()["scores"]
    eager = load_eager(model)
    codec = RequestCodec(eager.schema, max_candidates=5000, max_id=2**53, sequence_overflow="reject")
    features = codec.encode(codec.decode(json.dumps(body).encode())).features
    tiled = {name: value.expand(37, *value.shape[1:]) if name in eager.user_features else value
             for name, value in features.items()}
    with torch.no_grad():
        direct = eager.module(tiled)
    assert list(plain_scores) == list(our_scores) == eager.tasks
    for task in eager.tasks:
        assert len(plain_scores[task]) == 37
        assert torch.allclose(torch.tensor(plain_scores[task]), direct[task], atol=TOLERANCE, rtol=0)
        assert torch.allclose(torch.tensor(plain_scores[task]), torch.tensor(our_scores[task]), atol=TOLERANCE, rtol=0)


def test_quick_run_of_plain_and_ours_reports_every_step(store: Path, tmp_path: Path) -> None:
    code = main(["--model", str(store / SMALL_MODEL_NAME / "v1"), "--models", "default", "--servers", "plain,mari",
                 "--mixes", "small", "--slo-ms", f"small={SLO_MS}", "--quick",
                 *[arg for setting in OURS_ENV for arg in ("--server-env", setting)],
                 "--out", str(tmp_path), "--results-dir", str(tmp_path / "results")])
    assert code == 0
    data = json.loads((tmp_path / "peers.json").read_text())
    model = data["models"]["default"]
    assert [(c["variant"], c["mix"]) for c in model["curves"]] == [("plain", "small"), ("mari", "small")]
    for curve in model["curves"]:  # every step reported, whether or not the shared box let it pass
        assert len(curve["steps"]) == 2 and curve["single_slot_rps"] > 0
        for step in curve["steps"]:
            assert step["requests"] == max(1, round(step["offered_rps"] * step["duration_s"]))
            assert 0 <= step["failures"] <= step["requests"]
        passing = [step["offered_rps"] for step in curve["steps"] if step["meets_slo"]]
        assert curve["summary"]["capacity_rps"] == max(passing, default=0.0)
    plain = model["curves"][0]["steps"]
    weakest = max((s["offered_rps"] for s in plain if s["meets_slo"]), default=min(s["offered_rps"] for s in plain) / 2)
    assert model["common_rates"]["small"] == max(0.01, round(0.5 * weakest, 2))  # the only peer's capacity, halved
    for server in ("plain", "mari"):
        common = model["common"][server]["small"]
        assert common["offered_rps"] == model["common_rates"]["small"]
        assert common["requests"] == max(1, round(common["offered_rps"] * common["duration_s"]))
        assert common["cpu_s"] >= 0 and common["candidates"] >= 0
        assert (common["cpu_s_per_1k_candidates"] is None) == (common["candidates"] == 0)
    assert model["ceiling"]["requests"] > 0 and model["ceiling"]["runs_as"] == "mari"
    page = (tmp_path / "peers.md").read_text()
    assert "Quick smoke run" in page and "| plain FastAPI app |" in page and "| ours, default (auto) |" in page
    for name in ("peers_capacity.png", "peers_latency.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
