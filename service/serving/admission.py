"""Bounded inference off the event loop: a fixed number of slots, a short bounded wait, then 503.

CPU-bound torch work runs on a thread pool with one thread per slot. A request waits for a slot only if
fewer than `max_queued` requests are already waiting, and at most `queue_timeout_s`; otherwise it is
refused at once with Overloaded (503 + Retry-After) instead of joining an unbounded queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from service.serving.errors import Overloaded

T = TypeVar("T")


class InferencePool:
    """`slots` concurrent jobs on worker threads; admission control in front of them."""

    def __init__(self, slots: int, max_queued: int, queue_timeout_s: float, retry_after_s: int) -> None:
        self.slots = slots
        self.max_queued = max_queued
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="inference")
        self._semaphore: asyncio.Semaphore | None = None  # made on first use, inside the running loop
        self._waiting = 0

    async def run(self, job: Callable[[], T]) -> tuple[T, float]:
        """Run `job` on a slot; returns its result and the seconds spent waiting for the slot."""
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.slots)
        semaphore = self._semaphore
        started = time.perf_counter()
        if semaphore.locked():
            if self._waiting >= self.max_queued:
                raise Overloaded(f"all {self.slots} inference slots are busy and {self._waiting} requests wait",
                                 retry_after_s=self.retry_after_s)
            self._waiting += 1
            try:
                await asyncio.wait_for(semaphore.acquire(), timeout=self.queue_timeout_s)
            except TimeoutError:
                raise Overloaded(f"no inference slot freed within {self.queue_timeout_s}s",
                                 retry_after_s=self.retry_after_s) from None
            finally:
                self._waiting -= 1
        else:
            await semaphore.acquire()
        waited = time.perf_counter() - started
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, job)
        finally:
            semaphore.release()
        return result, waited

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
