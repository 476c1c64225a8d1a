"""Admission and micro-batching in front of the inference slots.

A request is admitted or refused the moment it is ready to score (503 + Retry-After at once, never after a
timeout) from what is already waiting: the number of requests and the candidates they hold. Admitted
requests wait in one queue; each free slot takes the oldest one together with every other waiting request of
the same batch key (same model and variant, so A/B arms batch separately) up to a request and a candidate cap,
and runs them as one job on its worker thread. With batching off the cap is one request: the same code path.
`queue_timeout_s` stays as a backstop for a slot stuck on a long job.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from service.serving.errors import Overloaded

T = TypeVar("T")
R = TypeVar("R")

BatchJob = Callable[[Sequence[Any]], Sequence[Any]]  # payloads -> one outcome (result or exception) each


@dataclass(frozen=True)
class BatchPolicy:
    """How many waiting requests one slot may take at once, and how long it waits for more (batching only)."""

    enabled: bool = False
    window_s: float = 0.0
    max_requests: int = 32
    max_candidates: int = 4096


@dataclass(frozen=True)
class Ticket(Generic[R]):
    """What a request gets back: its outcome and how long its batch's call took."""

    result: R
    batch_seconds: float


@dataclass(eq=False)  # compared by identity: the queue must never compare payloads (tensors)
class _Waiting:
    key: Hashable
    candidates: int
    payload: Any
    job: BatchJob
    future: asyncio.Future[Ticket[Any]]


class InferencePool:
    """`slots` worker threads fed by one admission-controlled queue; a slot runs a batch of requests."""

    def __init__(
        self, slots: int, max_queued: int, max_queued_candidates: int, queue_timeout_s: float, retry_after_s: int,
        policy: BatchPolicy | None = None, codec_threads: int = 1,
    ) -> None:
        self.slots = slots
        self.max_queued = max_queued
        self.max_queued_candidates = max_queued_candidates
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self.policy = policy or BatchPolicy()
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="inference")
        self._codec = ThreadPoolExecutor(max_workers=codec_threads, thread_name_prefix="codec")
        self._queue: deque[_Waiting] = deque()
        self._queued_candidates = 0
        self._arrived: asyncio.Event | None = None  # made on first use, inside the running loop
        self._workers: list[asyncio.Task[None]] = []
        self._idle_workers = slots

    async def run_codec(self, work: Callable[[], T]) -> T:
        """Run decoding/encoding work on the codec thread, beside inference (it does not hold a slot)."""
        return await asyncio.get_running_loop().run_in_executor(self._codec, work)

    async def submit(self, key: Hashable, candidates: int, payload: Any, job: BatchJob) -> Ticket[Any]:
        """Admit one request (or raise Overloaded at once) and wait for its outcome from a batch."""
        self._start()
        ahead = len(self._queue) - self._idle_workers  # >= 0: no slot is free for this request
        if ahead >= 0 and ahead >= self.max_queued:
            raise Overloaded(f"{len(self._queue)} requests already wait for the {self.slots} inference slot(s)",
                             retry_after_s=self.retry_after_s)
        if ahead >= 0 and self._queued_candidates + candidates > self.max_queued_candidates:
            raise Overloaded(f"{self._queued_candidates} candidates already wait; {candidates} more exceed "
                             f"max_queued_candidates={self.max_queued_candidates}", retry_after_s=self.retry_after_s)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Ticket[Any]] = loop.create_future()
        waiting = _Waiting(key, candidates, payload, job, future)
        self._queue.append(waiting)
        self._queued_candidates += candidates
        assert self._arrived is not None
        self._arrived.set()
        # A timer rather than wait_for(shield(...)): two tasks and futures fewer per request on the event loop
        timer = loop.call_later(self.queue_timeout_s, self._time_out, waiting)
        try:
            return await future
        finally:
            timer.cancel()

    def _time_out(self, waiting: _Waiting) -> None:
        """The backstop: a request still waiting after queue_timeout_s is refused; one already running is not
        (its outcome is on the way)."""
        if self._remove(waiting) and not waiting.future.done():
            waiting.future.set_exception(Overloaded(f"no inference slot freed within {self.queue_timeout_s}s",
                                                    retry_after_s=self.retry_after_s))

    def _start(self) -> None:
        if self._arrived is None:
            self._arrived = asyncio.Event()
            self._workers = [asyncio.create_task(self._slot_loop()) for _ in range(self.slots)]

    def _remove(self, waiting: _Waiting) -> bool:
        try:
            self._queue.remove(waiting)
        except ValueError:
            return False
        self._queued_candidates -= waiting.candidates
        return True

    def _take_batch(self) -> list[_Waiting]:
        """The oldest waiting request and, when batching, the next ones with its key, within the caps."""
        first = self._queue.popleft()
        batch, candidates = [first], first.candidates
        if self.policy.enabled:
            for waiting in list(self._queue):
                if len(batch) >= self.policy.max_requests:
                    break
                if waiting.key != first.key or candidates + waiting.candidates > self.policy.max_candidates:
                    continue
                self._queue.remove(waiting)
                batch.append(waiting)
                candidates += waiting.candidates
        self._queued_candidates -= candidates
        return batch

    async def _slot_loop(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            self._idle_workers -= 1
            try:
                if self.policy.enabled and self.policy.window_s > 0:
                    await asyncio.sleep(self.policy.window_s)
                if not self._queue:
                    continue
                batch = self._take_batch()
                started = time.perf_counter()
                try:
                    outcomes: Sequence[Any] = await loop.run_in_executor(
                        self._executor, batch[0].job, [w.payload for w in batch])
                except Exception as exc:  # the job itself broke: every request of the batch gets the error
                    outcomes = [exc] * len(batch)
                seconds = time.perf_counter() - started
                for waiting, outcome in zip(batch, outcomes):
                    if waiting.future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        waiting.future.set_exception(outcome)
                    else:
                        waiting.future.set_result(Ticket(outcome, seconds))
            finally:
                self._idle_workers += 1

    def shutdown(self) -> None:
        for worker in self._workers:
            worker.cancel()
        self._executor.shutdown(wait=True)
        self._codec.shutdown(wait=True)
