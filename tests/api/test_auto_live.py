"""A real server on the default settings serves `auto`: scores equal to VanI's, the measured table in /v1/models."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import torch

from service.engine import Variant
from service.serving.build import build_variants
from service.serving.codec import RequestCodec
from service.serving.settings import Settings
from service.store import load_artifact
from tests.api.conftest import rank_body
from tests.api.live_server import LiveServer
from tests.api.metrics_text import parse_metrics, value
from tests.conftest import SMALL_MODEL_NAME

TOLERANCE = 1e-5  # docs/ARCHITECTURE.md section 3, fp32


def test_a_server_on_the_defaults_serves_auto_with_vanis_scores_and_shows_what_it_measured(store: Path, schema) -> None:
    env = {"RANKER_MODEL_STORE": str(store), "RANKER_MODEL_NAME": SMALL_MODEL_NAME, "RANKER_MODEL_VERSION": "v1",
           "RANKER_TORCH_THREADS": "1", "RANKER_CONFIG_POLL_S": "0",
           "RANKER_WARMUP_CANDIDATES": "[1, 16]"}  # the variant and everything else: the defaults
    bodies = {n: rank_body(schema, n=n, seed=n) for n in (1, 30)}  # no A/B: all go to the default
    with LiveServer(env) as live:
        info = httpx.get(f"{live.url}/v1/models", timeout=30).json()
        answers = {n: httpx.post(f"{live.url}/rank", json=body, timeout=60) for n, body in bodies.items()}
        metrics = parse_metrics(httpx.get(f"{live.url}/metrics", timeout=30).text)
    assert info["routing"]["default_variant"] == "auto" and info["auto"]["default"] is True
    table = info["auto"]["by_candidates"]
    assert set(table) == {"1", "16"}
    loaded = load_artifact(store / SMALL_MODEL_NAME / "v1")
    vani = build_variants(loaded.model, loaded.manifest.user_features, loaded.schema.example_batch,
                          variants=(Variant.VANI,))[Variant.VANI].module
    settings = Settings()
    codec = RequestCodec(loaded.schema, max_candidates=settings.max_candidates, max_id=settings.max_id,
                         sequence_overflow=settings.sequence_overflow)
    for n, response in answers.items():
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["variant"] == response.headers["x-variant"] == table[str(min(n, 16))]["fastest"]
        with torch.inference_mode():
            expected = vani(codec.read(json.dumps(bodies[n]).encode()).encoded.features)
        for task in data["tasks"]:
            assert torch.allclose(torch.tensor(data["scores"][task]), expected[task], atol=TOLERANCE, rtol=0)
    served = [table[str(min(n, 16))]["fastest"] for n in bodies]
    for form in ("vani", "uoi", "mari"):
        assert value(metrics, "ranker_auto_requests_total", model=SMALL_MODEL_NAME, variant=form) == served.count(form)
