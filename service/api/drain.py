"""Drain on SIGTERM, so a load balancer takes the process out before it stops accepting.

uvicorn stops accepting the moment SIGTERM arrives. A worker instead marks itself draining (/readyz answers
503 at once, and responses carry `Connection: close` so keep-alive clients move to another replica), keeps
accepting and serving for `drain_delay_s`, and only then hands the signal to uvicorn, which stops accepting
and lets in-flight requests finish (`graceful_shutdown_s`). A second SIGTERM skips what is left of the delay.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

SignalHandler = Callable[[int, FrameType | None], Any]


class Drainable(Protocol):
    """What the handler flips: anything with a `draining` flag (the app's ServiceState)."""

    draining: bool


def drain_on_sigterm(state: Drainable, delay_s: float) -> Callable[[], None]:
    """Install the SIGTERM handler in this (main) thread; returns what restores the previous one.

    Does nothing off the main thread (an in-process test client runs the lifespan in another thread) or
    when no Python handler is installed (not under uvicorn).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    stop_server = signal.getsignal(signal.SIGTERM)  # uvicorn's Server.handle_exit
    if not callable(stop_server):
        return lambda: None
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        logger.info("drained for %.1fs: no longer accepting, finishing in-flight requests", delay_s)
        stop_server(signum, None)

    def begin(signum: int) -> None:
        logger.info("SIGTERM: draining (/readyz 503), still serving for %.1fs", delay_s)
        loop.call_later(delay_s, stop, signum)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of the main thread, possibly inside the event loop: only flip the flag
        # and hand the rest to the loop.
        if state.draining:
            loop.call_soon_threadsafe(stop, signum)  # a second SIGTERM: stop now
            return
        state.draining = True
        loop.call_soon_threadsafe(begin, signum)

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, stop_server)

    return restore


class CloseConnectionsWhileDraining:
    """ASGI middleware: while draining, every response says `Connection: close`, so clients reconnect
    (to another replica) instead of reusing a connection the server will close."""

    def __init__(self, app: ASGIApp, state: Drainable) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.state.draining:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)
