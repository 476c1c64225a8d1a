"""The scoring routes' short way through the ASGI stack: POST /rank, /rank/{model} and the Open Inference
Protocol's infer go straight to their work, past FastAPI's routing and request handler.

Why: on a small request the event loop is the server's bottleneck beside the model, and routing over every
route, the request handler and its parameter solving cost about a tenth of the loop's time per request (a
py-spy profile of a loaded server, docs/peers.md). These four routes take no parameter FastAPI has to parse:
the path names the model, the handler reads the body itself.

What stays the same: the middleware outside this one (the body budget, Connection: close while draining, the
500 handler of anything unexpected), the work (service/api/routes/rank.py `rank`, routes/v2.py `infer_scores`),
and the errors (errors.py `service_error_response`, the handler FastAPI calls). Anything else, another method on
these paths included, goes on to FastAPI, whose routes also document these four in /openapi.json.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.deps import state_of
from service.api.errors import service_error_response
from service.api.routes.rank import rank
from service.api.routes.v2 import infer_scores
from service.serving.errors import ServiceError

# The routes' own patterns: a path parameter is one segment ([^/]+), as Starlette matches `{name}`
_RANK = re.compile(r"/rank(?:/([^/]+))?")
_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class ScoringPath:
    """ASGI middleware, the innermost one: the scoring routes' requests are answered here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        work = _work(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        if work is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response: Response = await work(request)
        except ServiceError as exc:
            response = service_error_response(request, exc)
        await response(scope, receive, send)


def _work(scope: Scope) -> Callable[[Request], Awaitable[Response]] | None:
    path = scope["path"]
    if (found := _RANK.fullmatch(path)) is not None:
        model = found.group(1)
        return lambda request: rank(request, state_of(request), model)
    if (found := _INFER.fullmatch(path)) is not None:
        name, version = found.group(1), found.group(2)
        return lambda request: infer_scores(request, state_of(request), name, version)
    return None
