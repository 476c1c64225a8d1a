"""The HTTP limits of `ranker serve` as uvicorn options: one place for the single-worker and multi-worker paths.

uvicorn's own options where it has them (keep-alive timeout); the limits it lacks come from
LimitedHttpToolsProtocol (service/api/http_protocol.py), passed as `http=`. The connection cap is kept below
the process's RLIMIT_NOFILE, with room for the files the service itself opens.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
from typing import Any, cast

from service.api.http_protocol import HttpLimits, LimitedHttpToolsProtocol
from service.serving.settings import Settings

logger = logging.getLogger(__name__)

# Descriptors kept for everything but client connections: the listening socket, the model store's files, the
# metrics files (multiprocess mode), serving.json and its lock for the config poller, logs, pipes, torch.
# A running worker holds about 30; the rest is headroom.
RESERVED_FDS = 128
MIN_CONNECTIONS = 16  # below this the process cannot serve (a load balancer's probes alone need a few)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config that enforce the HTTP limits of `settings`."""
    limits = HttpLimits(
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        header_read_timeout_s=settings.header_read_timeout_s,
        max_connections=connection_cap(settings.max_connections),
        retry_after_s=settings.retry_after_s,
    )
    # A partial, not a class made here: uvicorn pickles its Config into spawned workers, and a partial of a
    # module-level class with plain values pickles; uvicorn only ever calls it to build a protocol.
    protocol = cast(type[asyncio.Protocol], functools.partial(LimitedHttpToolsProtocol, limits=limits))
    return {"http": protocol, "timeout_keep_alive": settings.keep_alive_timeout_s}


def connection_cap(requested: int) -> int:
    """`requested`, lowered when the soft RLIMIT_NOFILE could not hold it plus RESERVED_FDS; logged."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or requested <= soft - RESERVED_FDS:
        logger.info("HTTP: at most %d open connections per process (RLIMIT_NOFILE %s)", requested,
                    "unlimited" if soft == resource.RLIM_INFINITY else soft)
        return requested
    cap = soft - RESERVED_FDS
    if cap < MIN_CONNECTIONS:
        raise SystemExit(f"cannot serve: RLIMIT_NOFILE is {soft}, too low for {MIN_CONNECTIONS} connections plus "
                         f"{RESERVED_FDS} descriptors for the service's own files; raise it (ulimit -n)")
    logger.warning("HTTP: at most %d open connections per process, not max_connections=%d: RLIMIT_NOFILE is %d "
                   "and %d descriptors are kept for the service's own files", cap, requested, soft, RESERVED_FDS)
    return cap
