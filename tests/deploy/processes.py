"""Start, wait for and stop the real programs the deployment tests run (ranker serve, prometheus, podman)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx

# A bound on waiting, not a claim about start-up time: servers build their model on 2 shared cores.
READY_TIMEOUT_S = 240.0


def start(args: list[str], env: dict[str, str] | None, log_path: Path) -> subprocess.Popen[bytes]:
    """The program in its own session, stdout and stderr to log_path."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    """SIGTERM (graceful), SIGKILL past timeout_s; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_ok(url: str, process: subprocess.Popen[bytes] | None, log_path: Path,
            timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until `url` answers 200; a failure naming the log's tail when the process exits or the bound passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}: {log_path.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not 200 within {timeout_s}s: {log_path.read_text()[-4000:]}")
