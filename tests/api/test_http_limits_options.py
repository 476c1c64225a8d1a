"""uvicorn_options: the protocol and keep-alive handed to uvicorn, and the connection cap under RLIMIT_NOFILE."""

from __future__ import annotations

import pickle
import resource

import pytest
import uvicorn

from service.api import http_limits
from service.api.http_limits import RESERVED_FDS, connection_cap, uvicorn_options
from service.api.http_protocol import LimitedHttpToolsProtocol
from service.serving.settings import Settings


def test_the_options_carry_every_limit_and_pickle_into_spawned_workers() -> None:
    settings = Settings(max_header_bytes=8192, max_headers=50, header_read_timeout_s=3, keep_alive_timeout_s=2,
                        max_connections=64, retry_after_s=4)
    options = uvicorn_options(settings)
    config = uvicorn.Config("service.api.app:create_app_from_environment", factory=True, workers=2, **options)
    restored = pickle.loads(pickle.dumps(config))  # uvicorn's Multiprocess pickles the Config per worker
    assert restored.http.func is LimitedHttpToolsProtocol and restored.timeout_keep_alive == 2
    limits = restored.http.keywords["limits"]
    assert (limits.max_header_bytes, limits.max_headers, limits.header_read_timeout_s, limits.max_connections,
            limits.retry_after_s) == (8192, 50, 3, 64, 4)


def test_the_connection_cap_stays_under_the_file_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_limits.resource, "getrlimit", lambda _: (1024, 4096))
    assert connection_cap(100) == 100
    assert connection_cap(5000) == 1024 - RESERVED_FDS
    monkeypatch.setattr(http_limits.resource, "getrlimit", lambda _: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert connection_cap(5000) == 5000
    monkeypatch.setattr(http_limits.resource, "getrlimit", lambda _: (RESERVED_FDS + 4, 4096))
    with pytest.raises(SystemExit, match="RLIMIT_NOFILE"):
        connection_cap(1000)
