"""Micro-batching over HTTP on a real server: requests that wait for the slot are scored together, per A/B
arm, and each answer equals the same request scored alone."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.api.conftest import MODEL_NAME, rank_body
from tests.api.live_server import LiveServer
from tests.api.metrics_text import parse_metrics, total, value
from tests.api.test_server import post_rank, server_env

SLOT_DELAY_S = 0.6  # every batch holds the slot this long first: later requests queue behind it
SIZES = (1, 30, 7, 1, 60, 12, 3, 45)


def test_waiting_requests_are_scored_together_per_arm_and_equal_their_scores_alone(
    store: Path, schema, tmp_path: Path
) -> None:
    env = server_env(store, RANKER_BATCHING="true", RANKER_AB_SPLIT='{"mari": 0.5, "vani": 0.5}',
                     RANKER_SHADOW_VARIANT="uoi", RANKER_SHADOW_SAMPLE_RATE="1.0")
    bodies = [json.dumps(rank_body(schema, n=n, seed=100 + i)).encode() for i, n in enumerate(SIZES)]
    with LiveServer(env, delay_s=SLOT_DELAY_S, log_path=tmp_path / "server.log") as server:
        first: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: first.append(post_rank(server.url, rank_body(schema, n=5, seed=99))))
        thread.start()
        time.sleep(SLOT_DELAY_S / 3)  # the first request holds the slot; the others arrive and wait
        with ThreadPoolExecutor(len(bodies)) as pool:
            together = list(pool.map(lambda body: post_rank(server.url, body), bodies))
        thread.join()
        with httpx.Client(timeout=30) as http:
            samples = parse_metrics(http.get(f"{server.url}/metrics").text)
        alone = [post_rank(server.url, body) for body in bodies]  # one at a time: batches of one
        time.sleep(1.0)  # the shadow compares in the background
        with httpx.Client(timeout=30) as http:
            shadow = parse_metrics(http.get(f"{server.url}/metrics").text)
        log = server.log()

    assert all(r.status_code == 200 for r in together + alone + first), log
    arms = {r.headers["x-variant"] for r in together}
    assert arms == {"mari", "vani"}, "the seeds should reach both arms"
    for batched, single in zip(together, alone):
        assert batched.headers["x-variant"] == single.headers["x-variant"]
        got, want = batched.json()["scores"], single.json()["scores"]
        for task in want:
            assert max(abs(a - b) for a, b in zip(got[task], want[task])) <= 1e-5
        assert batched.json()["ranking"] == single.json()["ranking"] or _ties(single.json())
        queue_ms = float(batched.headers["server-timing"].split("queue;dur=")[1].split(",")[0])
        assert queue_ms >= 100, "a request that waited behind the slot reports its wait as queue time"

    # Every request ran in exactly one call of its own arm, and the waiting ones shared calls.
    for arm in arms:
        requests_in_arm = sum(r.headers["x-variant"] == arm for r in together + first)
        assert value(samples, "ranker_batch_requests_sum", model=MODEL_NAME, variant=arm) == requests_in_arm
        assert value(samples, "ranker_batch_requests_count", model=MODEL_NAME, variant=arm) < requests_in_arm
    batched_requests = total(samples, "ranker_batch_requests_sum")
    assert batched_requests == len(bodies) + 1  # every request in exactly one call
    assert total(samples, "ranker_batch_candidates_sum") == sum(SIZES) + 5
    # The shadow re-scored every request of a batch on its own, and found the batched scores equal.
    assert total(shadow, "ranker_shadow_comparisons_total") == 2 * len(bodies) + 1
    assert total(shadow, "ranker_shadow_mismatches_total") == 0


def _ties(body: dict) -> bool:
    finals = body["final_scores"]
    return len(set(finals)) < len(finals)
