"""The supervisor of `ranker serve --workers N`: uvicorn's, except that one worker's failure never stops the rest.

uvicorn's Multiprocess respawns a worker that dies, but when the respawned one exits with STARTUP_FAILURE (its
lifespan start-up raised) it stops the parent and every healthy sibling with it: it assumes the app itself is
broken and would fail the same way on every start. Here a worker starts from the fleet's state at that moment
(serving.json, the store), which can be bad for a while (a version folder deleted while siblings serve it from
memory, a file half-written by a writer that does not rename) while the siblings serve fine. So:

- a worker that fails at start-up is retried with bounded exponential backoff (one log line each time), and its
  siblings keep serving; the backoff resets once a worker of that slot is ready;
- only when no worker has been ready since the server started, and none is still starting, does the parent stop
  as uvicorn's does: the initial start is broken, fail fast (`ranker serve` has checked the config before);
- any other death (kill -9, OOM) is respawned at once, as uvicorn does;
- a health ping returns as soon as the worker exits: uvicorn's waits out its whole timeout (5 s) when a worker
  exits mid-ping (as one failing at start-up does), and the parent handles no signal meanwhile.
"""

from __future__ import annotations

import logging
import pickle
import time
from multiprocessing.connection import wait
from socket import socket

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

logger = logging.getLogger(__name__)

START_RETRY_FIRST_S = 1.0  # wait before the first retry of a worker that failed at start-up
START_RETRY_MAX_S = 30.0  # the backoff doubles per consecutive failure of a slot, up to this


def start_retry_delay(failures: int) -> float:
    """Seconds before the next start of a slot whose worker failed at start-up `failures` times in a row."""
    return min(START_RETRY_FIRST_S * 2.0 ** (failures - 1), START_RETRY_MAX_S)


class WorkerSupervisor(Multiprocess):
    """uvicorn's worker supervisor, with start-up failures retried (module docstring), and letting go of the
    listening socket once it has told the workers to stop. The workers keep accepting while they drain
    (service/api/drain.py); when the last one closes it, the socket closes and new connections are refused at
    once. Held here it would keep listening, and connections queued on it after the workers stopped accepting
    would be reset when this process exits."""

    def __init__(self, config: Config, sockets: list[socket]) -> None:
        super().__init__(config, sockets)
        self._failures: dict[int, int] = {}  # slot -> consecutive start-up failures
        self._retry_at: dict[int, float] = {}  # slot -> monotonic time of its next start
        self._ever_ready = False  # some worker finished start-up since the server started

    def terminate_all(self) -> None:
        super().terminate_all()
        for sock in self.sockets:
            sock.close()

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return  # the parent is exiting: no respawns
        for slot, process in enumerate(self.processes):
            if slot in self._retry_at:
                if time.monotonic() >= self._retry_at[slot]:
                    self._start(slot)
                continue
            started = self._healthcheck(process)
            if started is not None:  # alive and answering
                if started:
                    self._failures.pop(slot, None)  # a worker of this slot is ready: the next failure waits 1 s
                    self._ever_ready = True
                continue
            process.kill()  # hung: kill it (a dead one: only closes its pipes)
            process.join()
            if self.should_exit.is_set():
                return
            if process.exitcode == STARTUP_FAILURE:
                if not self._ever_ready and not self._others_alive(slot):
                    logger.error("Child process [%s] failed to start and no worker ever started: stopping the "
                                 "parent process.", process.pid)
                    self.should_exit.set()
                    return
                self._back_off(slot, process)
                continue
            logger.info("Child process [%s] died (exit code %s); starting a new one", process.pid, process.exitcode)
            self._start(slot)

    def _healthcheck(self, process: Process) -> bool | None:
        """Whether the worker has finished start-up; None when it has exited, exits while asked, or does not
        answer within timeout_worker_healthcheck (hung)."""
        if not process.process.is_alive():
            return None
        try:
            process.parent_conn.send(b"ping")
            answered = wait([process.parent_conn, process.process.sentinel], self.config.timeout_worker_healthcheck)
            if process.parent_conn not in answered:
                return None
            return bool(process.parent_conn.recv())
        except (OSError, EOFError, pickle.UnpicklingError):
            return None

    def _back_off(self, slot: int, process: Process) -> None:
        failures = self._failures.get(slot, 0) + 1
        self._failures[slot] = failures
        delay = start_retry_delay(failures)
        self._retry_at[slot] = time.monotonic() + delay
        serving = sum(1 for other, p in enumerate(self.processes) if other != slot and p.process.is_alive())
        logger.warning("Child process [%s] failed at start-up (its log above says why; failure %d in a row); %d "
                       "other worker(s) keep serving; next start in %.0f s", process.pid, failures, serving, delay)

    def _start(self, slot: int) -> None:
        self._retry_at.pop(slot, None)
        process = Process(self.config, self.sockets)
        process.start()
        self.processes[slot] = process

    def _others_alive(self, slot: int) -> bool:
        return any(p.process.is_alive() for other, p in enumerate(self.processes) if other != slot)
