"""A byte budget for request bodies held in memory at once, across every request of the process.

Each body is bounded (max_body_bytes, 413) but their number was not: 100 concurrent 16 MB uploads took the
process from 444 MB to 2.8 GB, and it stayed there. BodyBudgetGuard, an ASGI middleware, reserves a body's
bytes from the budget when the handler starts reading it (the declared Content-Length at once, a chunked
body as it arrives); a body that does not fit is refused with `Overloaded` (503 with Retry-After) before it
is read. The reservation lasts until the request ends, however it ends (answer, error, disconnect), since the
body and what is decoded from it live that long. When the budget empties after large bodies, glibc is asked
to return the freed heap to the OS, so a burst does not leave the process at its peak size.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.serving.errors import Overloaded
from service.serving.memory import malloc_trim

logger = logging.getLogger(__name__)

TRIM_AFTER_BYTES = 8 * 2**20  # bodies released since the last trim before the next one (a few ms of work)


class BodyBudget:
    """Bytes of request bodies held now, against `capacity`. Used from the event loop only (no lock)."""

    def __init__(self, capacity: int, retry_after_s: int) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self.in_use = 0
        self._released_since_trim = 0
        self._trimming: asyncio.Future[None] | None = None

    def reserve(self, size: int) -> None:
        """Take `size` bytes, or raise Overloaded when they do not fit beside the bodies held now."""
        if self.in_use + size > self.capacity:
            raise Overloaded(
                f"request bodies held now ({self.in_use} bytes) leave no room for {size} more bytes "
                f"(max_buffered_body_bytes {self.capacity}); retry later",
                retry_after_s=self.retry_after_s,
            )
        self.in_use += size

    def release(self, size: int) -> None:
        """Give back `size` reserved bytes; trims the heap once the budget is empty after large bodies."""
        self.in_use -= size
        self._released_since_trim += size
        if self.in_use == 0 and self._released_since_trim >= TRIM_AFTER_BYTES:
            self._released_since_trim = 0
            self._trim()

    def _trim(self) -> None:
        if self._trimming is not None and not self._trimming.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # released outside a loop (a test): trim here
            malloc_trim()
            return
        self._trimming = loop.run_in_executor(None, malloc_trim)  # a large heap takes ms: off the event loop


class BodyBudgetGuard:
    """ASGI middleware: every HTTP request's body is read within `budget` (see the module docstring)."""

    def __init__(self, app: ASGIApp, budget: BodyBudget) -> None:
        self.app = app
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        held = 0

        async def receive_within_budget() -> Message:
            nonlocal held
            if held == 0 and declared:  # the first read of a declared body: all of it, before a byte is read
                self.budget.reserve(declared)
                held = declared
            message = await receive()
            arrived = len(message.get("body", b""))
            if declared is None and arrived:  # chunked: as it arrives
                self.budget.reserve(arrived)
                held += arrived
            return message

        try:
            await self.app(scope, receive_within_budget, send)
        finally:
            if held:
                self.budget.release(held)


def _content_length(scope: Scope) -> int | None:
    """The declared Content-Length (None when there is none or it is not a number: read as it comes)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
