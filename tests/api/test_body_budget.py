"""BodyBudgetGuard in isolation: what it reserves, when it refuses, and that every way a request ends gives the
bytes back (tests/security/test_http_limits.py runs it in a real server)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from service.api import body_budget
from service.api.body_budget import TRIM_AFTER_BYTES, BodyBudget, BodyBudgetGuard
from service.serving.errors import Overloaded

Message = dict[str, Any]


def http_scope(content_length: int | None) -> dict[str, Any]:
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    return {"type": "http", "headers": headers}


def run(guard: BodyBudgetGuard, scope: dict[str, Any], messages: list[Message]) -> list[Message]:
    """Call `guard` with a receive that hands out `messages`; returns what reached the inner receive's caller."""
    pending = list(messages)

    async def receive() -> Message:
        return pending.pop(0)

    async def send(message: Message) -> None:
        pass

    asyncio.run(guard(scope, receive, send))
    return pending


def reading_app(reads: int, then: Callable[[], Awaitable[None]] | None = None) -> Any:
    """An ASGI app that calls receive `reads` times, then runs `then`."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for _ in range(reads):
            await receive()
        if then is not None:
            await then()
    return app


def test_a_declared_body_is_reserved_whole_before_it_is_read_and_released_after() -> None:
    budget = BodyBudget(capacity=1000, retry_after_s=3)
    seen: list[int] = []

    async def check() -> None:
        seen.append(budget.in_use)

    run(BodyBudgetGuard(reading_app(1, check), budget), http_scope(600),
        [{"type": "http.request", "body": b"x" * 600, "more_body": False}])
    assert seen == [600] and budget.in_use == 0


def test_a_declared_body_that_does_not_fit_is_refused_before_a_byte_is_read() -> None:
    budget = BodyBudget(capacity=1000, retry_after_s=3)
    budget.reserve(500)  # another request's body
    messages = [{"type": "http.request", "body": b"x" * 600, "more_body": False}]
    with pytest.raises(Overloaded) as refused:
        run(BodyBudgetGuard(reading_app(1), budget), http_scope(600), messages)
    assert refused.value.retry_after_s == 3 and "max_buffered_body_bytes" in refused.value.message
    assert len(messages) == 1 and budget.in_use == 500  # nothing received, nothing kept


def test_a_chunked_body_is_reserved_as_it_arrives_and_refused_when_it_passes_the_budget() -> None:
    budget = BodyBudget(capacity=1000, retry_after_s=1)
    chunks = [{"type": "http.request", "body": b"x" * 400, "more_body": True} for _ in range(3)]
    with pytest.raises(Overloaded):
        run(BodyBudgetGuard(reading_app(3), budget), http_scope(None), chunks)
    assert budget.in_use == 0


@pytest.mark.parametrize("ending", ["answered", "error", "disconnect"])
def test_the_reservation_comes_back_however_the_request_ends(ending: str) -> None:
    budget = BodyBudget(capacity=1000, retry_after_s=1)
    messages = [{"type": "http.request", "body": b"x" * 100, "more_body": True}, {"type": "http.disconnect"}]

    async def end() -> None:
        if ending == "error":
            raise RuntimeError("handler failed")

    app = reading_app(2 if ending == "disconnect" else 1, end)
    if ending == "error":
        with pytest.raises(RuntimeError):
            run(BodyBudgetGuard(app, budget), http_scope(300), messages)
    else:
        run(BodyBudgetGuard(app, budget), http_scope(300), messages)
    assert budget.in_use == 0


def test_the_heap_is_trimmed_once_the_budget_empties_after_large_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[None] = []
    monkeypatch.setattr(body_budget, "malloc_trim", lambda: trims.append(None))
    budget = BodyBudget(capacity=4 * TRIM_AFTER_BYTES, retry_after_s=1)
    budget.reserve(TRIM_AFTER_BYTES)
    budget.reserve(1)
    budget.release(TRIM_AFTER_BYTES)
    assert trims == []  # a body is still held
    budget.release(1)
    assert trims == [None]
    budget.reserve(10)
    budget.release(10)
    assert trims == [None]  # small bodies since: no trim
