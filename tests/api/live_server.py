"""A real `ranker serve` (uvicorn) in a subprocess on a free 127.0.0.1 port, for integration tests.

Run as a module it is the server process: `python -m tests.api.live_server PORT WORKERS [DELAY_S]`; a
delay makes every scoring hold its inference slot that long (test-only: overload and graceful shutdown).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """Starts the server, waits for /readyz, stops it with SIGTERM (graceful) on exit."""

    def __init__(self, env: dict[str, str], workers: int = 1, delay_s: float = 0.0, log_path: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
        self.args = [sys.executable, "-m", "tests.api.live_server", str(self.port), str(workers), str(delay_s)]
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> LiveServer:
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(self.args, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; log: {self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
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
        return self.log_path.read_text()[-4000:] if self.log_path and self.log_path.exists() else "(no log)"


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
