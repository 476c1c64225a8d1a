"""A real `ranker serve` (uvicorn) in a subprocess on a free 127.0.0.1 port, for integration tests.

Run as a module it is the server process: `python -m tests.api.live_server PORT WORKERS [DELAY_S]`; a
delay makes every scoring hold its inference slot that long (test-only: overload and graceful shutdown).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.ports import free_port

__all__ = ["REPO_ROOT", "LiveServer", "free_port", "port_was_taken"]

REPO_ROOT = Path(__file__).resolve().parents[2]
# A bound on waiting, not a claim about start-up time: with pytest-xdist a 2-worker server can start while
# another test's servers and models share the same cores.
READY_TIMEOUT_S = 240.0
READY_POLL_S = 0.1
START_ATTEMPTS = 3  # a port taken between its choice and the server's bind: start again on another one
# Servers started here get these unless the test's own env sets them: no torch.compile at start-up (minutes of
# inductor for nothing a test asserts), and no SIGTERM drain delay (5 s of waiting at every stop). A test
# about either sets it itself.
TEST_DEFAULTS = {"RANKER_COMPILE": "off", "RANKER_DRAIN_DELAY_S": "0"}


def port_was_taken(log: str) -> bool:
    """uvicorn's line when it cannot bind (one worker: after start-up; several: before any worker starts)."""
    return "address already in use" in log.lower()


class LiveServer:
    """Starts the server, waits for /readyz, stops it with SIGTERM (graceful) on exit. A port taken between its
    choice and the bind (uvicorn exits: "address already in use") is replaced and the server started again."""

    def __init__(self, env: dict[str, str], workers: int = 1, delay_s: float = 0.0, log_path: Path | None = None):
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **TEST_DEFAULTS, **env}
        self.workers, self.delay_s = workers, delay_s
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="live-server-")) / "server.log"
        self._new_port()
        self.process: subprocess.Popen | None = None

    def _new_port(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "tests.api.live_server", str(self.port), str(self.workers),
                     str(self.delay_s)]

    def __enter__(self) -> LiveServer:
        deadline = time.monotonic() + READY_TIMEOUT_S
        attempt = 1
        while not self._start(deadline):
            if attempt == START_ATTEMPTS or not port_was_taken(self.log()):
                assert self.process is not None
                raise RuntimeError(f"server exited with {self.process.returncode}; log: {self.log()}")
            attempt += 1
            self._new_port()
        return self

    def _start(self, deadline: float) -> bool:
        """Start the process; True once /readyz is 200, False when it exits first; raises past the deadline."""
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.args, cwd=REPO_ROOT, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(READY_POLL_S)
        self.stop()
        raise RuntimeError(f"server not ready within {READY_TIMEOUT_S}s; log: {self.log()}")

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text()[-4000:] if self.log_path.exists() else "(no log)"


def _main() -> None:
    port, workers, delay_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    if delay_s > 0:
        from service.serving.scorer import RequestScorer

        score = RequestScorer._score_on_slot

        def slow_score(self: RequestScorer, *args: Any) -> Any:
            time.sleep(delay_s)
            return score(self, *args)

        RequestScorer._score_on_slot = slow_score  # type: ignore[method-assign]
    from service.api.server import serve

    serve("127.0.0.1", port, workers)


if __name__ == "__main__":
    _main()
