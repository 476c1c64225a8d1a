"""Free 127.0.0.1 ports for the servers the tests start, safe when pytest-xdist runs tests side by side.

A port taken with bind(("127.0.0.1", 0)) and released again comes from the kernel's ephemeral range, which every
outgoing connection also draws from: between its release and the server's bind (seconds: the server imports
torch first), a client connection of a test running in parallel (load generators open thousands) can hold it,
and the server then exits with "address already in use". Ports here come from below that range, where no
outgoing connection is ever placed, and each xdist worker has its own slice of it, so two workers never pick
the same one; a port something else listens on (another program on the machine) is skipped by the bind check.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

SLICE = 500  # ports per xdist worker
FIRST_PORT = 12000  # well above the registered services most machines run, below any usual ephemeral range
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _worker_index() -> int:
    """0 for gw0 (or no xdist), 1 for gw1, ..."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


def _ephemeral_start() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _candidates() -> itertools.cycle[int] | None:
    """This worker's slice, cycled (starting at a pid-dependent offset, so a run right after another does not
    retry the ports its servers may still hold); None when the slice would reach the ephemeral range."""
    first = FIRST_PORT + _worker_index() * SLICE
    if first + SLICE > _ephemeral_start():
        return None
    offset = os.getpid() % SLICE
    return itertools.cycle([first + (offset + i) % SLICE for i in range(SLICE)])


_PORTS = _candidates()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A 127.0.0.1 port nothing is bound to now, from this worker's slice below the ephemeral range (the kernel's
    choice where the machine's ephemeral range leaves no room for the slice)."""
    if _PORTS is not None:
        for _ in range(SLICE):
            port = next(_PORTS)
            if _bindable(port):
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
