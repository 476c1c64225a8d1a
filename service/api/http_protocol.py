"""uvicorn's httptools protocol with the limits it lacks: head size, header count, head read time, connections.

With httptools, uvicorn reads a request head of any size (httptools joins a header value piece by piece, so
a 128 MiB header costs seconds of event-loop CPU), keeps a connection that sends nothing or half a request
line open forever, and accepts connections until file descriptors run out. This subclass refuses each case
as it happens, the way nginx and Envoy do: a head over `max_header_bytes` or `max_headers` is a 431 before
more of it is parsed, a head not complete within `header_read_timeout_s` of connecting (or of the last
response) closes the connection (408 when part of it came), and a connection beyond `max_connections` gets a
503 and is closed at once. Refusals carry the service's error body and `Connection: close`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from service.api.errors import error_body

logger = logging.getLogger(__name__)

# After a refusal the rest of what the client sends is read and dropped this long before the socket closes
# (nginx's lingering close): closing with unread bytes would reset the connection, and the client could lose
# the refusal it was about to read.
LINGER_S = 1.0
REFUSAL_LOG_EVERY_S = 10.0  # refusals are logged in one summary line at most this often (no log flood)


@dataclass(frozen=True)
class HttpLimits:
    """The limits one protocol instance enforces; plain values, so that uvicorn can pickle them into workers."""

    max_header_bytes: int
    max_headers: int
    header_read_timeout_s: float
    max_connections: int
    retry_after_s: int


class HeadRefused(Exception):
    """A request head broke a limit: answered with `status` and the error `code`, then the connection closes."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class _Head:
    """The request head now arriving: bytes of request line and header fields so far."""

    size: int = 0


@dataclass
class _RefusalLog:
    """Counts refusals by code and logs them in one line at most every REFUSAL_LOG_EVERY_S."""

    counts: dict[str, int] = field(default_factory=dict)
    logged_at: float = float("-inf")

    def note(self, code: str) -> None:
        self.counts[code] = self.counts.get(code, 0) + 1
        now = time.monotonic()
        if now - self.logged_at >= REFUSAL_LOG_EVERY_S:
            logger.warning("HTTP limits refused connections: %s", self.counts)
            self.counts, self.logged_at = {}, now


REFUSALS = _RefusalLog()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that bounds each request head and the time to send it, and the connection count.

    Data is fed to the parser in pieces no larger than what the current head may still hold, so a head is
    refused as soon as it passes `max_header_bytes`, with at most that much parsed. A pipelined head that
    begins inside a piece of the previous body may take up to twice that before the refusal.
    """

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, limits: HttpLimits) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._head: _Head | None = _Head()  # None while a body (or nothing: request answered) is being read
        self._fields = 0  # header fields (and trailers) of the current message
        self._body_seen = False
        self._unframed = 0  # body state: bytes fed since the last body byte (chunk sizes, trailers)
        self._head_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._lingering = False

    # --- connection life ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.server_state.connections) >= self.limits.max_connections:
            self.transport = transport  # connection_lost closes it again: uvicorn's own code path
            self._lingering = True  # nothing it sends is parsed
            REFUSALS.note("too_many_connections")
            transport.write(self._refusal(503, "too_many_connections",
                                          f"more than {self.limits.max_connections} open connections",
                                          retry_after=True))
            transport.close()
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # uvicorn waits for the next request: its head is timed
            self._arm_head_timer()

    # --- reading ---

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the remainder of a refused request: dropped unparsed until the connection closes
        self._unset_keepalive_if_required()
        limit = self.limits.max_header_bytes
        rest = memoryview(data)
        while rest and not self.transport.is_closing() and not self._lingering:
            head = self._head
            if head is not None and head.size >= limit:
                self._refuse(HeadRefused(431, "headers_too_large", f"request head over {limit} bytes"))
                return
            size = limit - head.size if head is not None else limit
            piece, rest = rest[:size], rest[size:]
            self._body_seen = False
            if not self._feed(piece):
                return
            if head is not None and head is self._head:
                head.size += len(piece)
            elif head is None and self._head is None:
                self._unframed = 0 if self._body_seen else self._unframed + len(piece)
                if self._unframed > limit:
                    self._refuse(HeadRefused(431, "headers_too_large", f"trailers over {limit} bytes"))
                    return

    def _feed(self, piece: memoryview) -> bool:
        """uvicorn's data_received for one piece, with a refused head answered by its own status; False once
        the connection is answered or handed over (error, refusal, upgrade)."""
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HeadRefused):
                self._refuse(exc.__context__)
            else:
                self._bad_request()
            return False
        except httptools.HttpParserError:
            self._bad_request()
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return True

    def _bad_request(self) -> None:
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)

    # --- parser callbacks ---

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._fields = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > self.limits.max_headers:
            raise HeadRefused(431, "too_many_headers", f"more than {self.limits.max_headers} header fields")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head = None
        self._unframed = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_seen = True
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head = _Head()  # whatever comes next is the next request's head

    # --- timers and refusals ---

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.limits.header_read_timeout_s, self._on_head_timeout)

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._lingering:
            return
        if self._head is not None and self._head.size > 0:
            self._refuse(HeadRefused(408, "header_read_timeout",
                                     f"request head not complete within {self.limits.header_read_timeout_s:g} s"))
        else:  # idle: nothing of a request came (or only the rest of an answered one's body)
            self.transport.close()

    def _refuse(self, refusal: HeadRefused) -> None:
        """Answer `refusal`, then close. Only close when the answer could be taken for another request's: a
        pipelined head refused while the request before it is unanswered, or trailers after a response began."""
        REFUSALS.note(refusal.code)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the request in progress sees a disconnect and writes nothing more
            cycle.message_event.set()
            if self._head is not None or cycle.response_started:
                self.transport.close()
                return
        self.transport.write(self._refusal(refusal.status, refusal.code, refusal.message))
        self._lingering = True
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the refusal, then end of stream
        self._close_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def _refusal(self, status: int, code: str, message: str, *, retry_after: bool = False) -> bytes:
        body = json.dumps(error_body(code, message)).encode()
        lines = [STATUS_LINE[status]]
        lines += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        if retry_after:
            lines.append(b"retry-after: %d\r\n" % self.limits.retry_after_s)
        lines += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                  b"connection: close\r\n\r\n", body]
        return b"".join(lines)
