"""The inference pool's queue holds requests by identity: their payloads (tensors) are never compared."""

from __future__ import annotations

import asyncio

import torch

from service.serving.admission import InferencePool
from service.serving.errors import Overloaded


def test_a_waiting_request_that_times_out_behind_an_equal_looking_one_gets_overloaded() -> None:
    # Two requests of the same model, variant and size wait; the later one's timeout fires first (a tie in the
    # timer heap does that under load). Taking it out of the queue must not compare the two payloads.
    pool = InferencePool(slots=1, max_queued=8, max_queued_candidates=1000, queue_timeout_s=0.2, retry_after_s=1)
    release = asyncio.Event()

    async def scenario() -> list[object]:
        loop = asyncio.get_running_loop()

        def hold(batch):  # the only slot is busy until the test lets go
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
            return [None] * len(batch)

        holder = asyncio.create_task(pool.submit("key", 5, {"x": torch.ones(5)}, hold))
        await asyncio.sleep(0.05)
        pool.queue_timeout_s = 10.0
        earlier = asyncio.create_task(pool.submit("key", 5, {"x": torch.ones(5)}, hold))
        await asyncio.sleep(0.05)
        pool.queue_timeout_s = 0.1
        later = asyncio.create_task(pool.submit("key", 5, {"x": torch.zeros(5)}, hold))
        outcome = await asyncio.gather(later, return_exceptions=True)
        release.set()
        await asyncio.gather(holder, earlier)
        return outcome

    try:
        (outcome,) = asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert isinstance(outcome, Overloaded), outcome
