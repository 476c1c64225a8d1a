"""One background thread fed by a bounded queue: the off-request-path work of the shadow (service/serving/shadow.py)
and of the version comparison (service/serving/version_compare.py).

A request only ever puts a job without blocking; a full queue drops the job and counts it, so the primary
response never waits. A job that fails is logged and never takes the thread down.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Job = TypeVar("Job")
_STOP = object()


class BackgroundWorker(Generic[Job]):
    """Runs `work` on each submitted job in one daemon thread, from `start` to `stop`."""

    def __init__(self, name: str, queue_size: int, work: Callable[[Job], object], dropped: Callable[[], None],
                 describe: Callable[[Job], str]) -> None:
        self.name = name
        self._work = work
        self._dropped = dropped  # counts a job the full queue refused
        self._describe = describe  # names a failed job in its log line (its request id)
        self._queue: queue.Queue[Job | object] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            pass  # daemon thread: it dies with the process
        self._thread.join(timeout_s)
        self._thread = None

    def submit(self, job: Job) -> bool:
        """Queue a job without blocking; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            self._dropped()
            return False

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            try:
                self._work(job)  # type: ignore[arg-type]  # anything but the stop marker is a Job
            except Exception:  # background work must never take anything else down
                logger.exception("%s failed for %s", self.name, self._describe(job))  # type: ignore[arg-type]
