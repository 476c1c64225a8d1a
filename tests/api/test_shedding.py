"""Overload is refused up front, from what already waits (requests and candidates), not by timing out."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

from service.api.app import create_app
from tests.api.conftest import make_settings, rank_body

SLOT_S = 0.8
JSON = {"content-type": "application/json"}


def _slow_app(store: Path, **overrides):
    app = create_app(make_settings(store, model_version="v1", **{"queue_timeout_s": 30.0, **overrides}))
    scorer = app.state.service.scorer
    score = scorer._score_on_slot

    def slow_score(*args, **kwargs):  # hold the only slot so that later requests must wait
        time.sleep(SLOT_S)
        return score(*args, **kwargs)

    scorer._score_on_slot = slow_score
    return app


async def _burst(app, first: bytes, rest: list[bytes]) -> list[tuple[int, float]]:
    """The first body takes the slot; the rest arrive while it runs. (status, seconds) of each of the rest."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
            async def timed(body: bytes) -> tuple[int, float]:
                started = time.perf_counter()
                response = await http.post("/rank", content=body, headers=JSON)
                if response.status_code == 503:
                    assert response.json()["error"]["code"] == "overloaded" and "retry-after" in response.headers
                return response.status_code, time.perf_counter() - started

            holder = asyncio.create_task(timed(first))
            await asyncio.sleep(SLOT_S / 4)
            results = await asyncio.gather(*(timed(body) for body in rest))
            assert (await holder)[0] == 200
            return list(results)


def test_requests_beyond_the_queued_candidates_are_refused_at_once(store: Path, schema) -> None:
    app = _slow_app(store, max_queued_requests=100, max_queued_candidates=100)
    first = json.dumps(rank_body(schema, n=50)).encode()
    rest = [json.dumps(rank_body(schema, n=60, seed=i)).encode() for i in range(4)]
    results = asyncio.run(_burst(app, first, rest))
    assert sorted(status for status, _ in results) == [200, 503, 503, 503]  # 60 queue; 60 more exceed 100
    refused = [seconds for status, seconds in results if status == 503]
    assert max(refused) < SLOT_S / 2, f"503s took {refused}: they waited instead of being shed"


def test_small_requests_still_queue_when_large_ones_are_refused(store: Path, schema) -> None:
    app = _slow_app(store, max_queued_requests=100, max_queued_candidates=100)
    first = json.dumps(rank_body(schema, n=50)).encode()
    rest = [json.dumps(rank_body(schema, n=n, seed=i)).encode() for i, n in enumerate((150, 30, 30, 30))]
    results = asyncio.run(_burst(app, first, rest))
    assert [status for status, _ in results] == [503, 200, 200, 200]  # 150 alone exceeds; 3 x 30 fit in 100

