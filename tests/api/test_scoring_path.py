"""The scoring routes' short way (service/api/scoring_path.py) answers exactly as FastAPI's routes for them would:
the same status, body and headers for valid and bad requests on /rank, /rank/{model} and the V2 infer routes,
while FastAPI's request handler is not run for them; any other request still goes to FastAPI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.scoring_path import ScoringPath
from tests.api.conftest import make_settings, private_store, rank_body
from tests.api.v2_requests import feature_arrays, infer_inputs, request_body

VOLATILE = {"x-request-id", "server-timing", "date", "content-length"}  # differ between any two answers


def _without_short_way(app: FastAPI) -> FastAPI:
    """The same app with FastAPI's routes answering the scoring requests (before its middleware stack is built)."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not ScoringPath]
    return app


@pytest.fixture(scope="module")
def clients(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    root = private_store(store, tmp_path_factory)
    settings = make_settings(root, model_version="v1", variant="mari", config_poll_s=0, max_candidates=50)
    with TestClient(create_app(settings)) as short, TestClient(_without_short_way(create_app(settings))) as routed:
        yield {"short": short, "routed": routed}


def _requests(schema: Any) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(method, path, body, headers): valid and bad requests on every scoring route, and a few near misses."""
    good = rank_body(schema, n=9, seed=3, request_id="same-id")
    v2, _ = request_body(infer_inputs(schema, feature_arrays(schema, good), binary=False))
    as_json = {"content-type": "application/json"}
    broken = dict(good, top_k=0)
    return [
        ("POST", "/rank", json.dumps(good).encode(), as_json),
        ("POST", "/rank/default", json.dumps(good).encode(), as_json),
        ("POST", "/rank/gamma", json.dumps(good).encode(), as_json),  # 404 unknown_model
        ("POST", "/rank", b"{not json", as_json),  # 400 malformed
        ("POST", "/rank", json.dumps(broken).encode(), as_json),  # 422 naming top_k
        ("POST", "/rank", json.dumps(good).encode(), {"content-type": "text/plain"}),  # 415
        ("POST", "/rank", json.dumps(rank_body(schema, n=51)).encode(), as_json),  # 422 past max_candidates
        ("POST", "/v2/models/default/infer", v2, as_json),
        ("POST", "/v2/models/default/versions/v1/infer", v2, as_json),
        ("POST", "/v2/models/default/versions/v9/infer", v2, as_json),  # a version not served
        ("POST", "/v2/models/gamma/infer", v2, as_json),
        ("POST", "/v2/models/default/infer", b"[1, 2]", as_json),  # 400 in V2's shape
        ("GET", "/rank", b"", {}),  # 405: not a scoring request, FastAPI answers both
        ("POST", "/rank/", json.dumps(good).encode(), as_json),  # not a route: FastAPI answers both
        ("POST", "/rank/default/extra", json.dumps(good).encode(), as_json),
    ]


def _answer(client: TestClient, method: str, path: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    response = client.request(method, path, content=body or None, headers=headers, follow_redirects=False)
    content: Any = response.json() if response.headers.get("content-type", "").startswith("application/json") \
        else response.content
    if isinstance(content, dict) and isinstance(content.get("error"), dict):
        content["error"].pop("request_id", None)
    kept = {k: v for k, v in response.headers.items() if k not in VOLATILE}
    return {"status": response.status_code, "body": content, "headers": kept}


def test_every_scoring_request_is_answered_as_fastapis_routes_answer_it(clients: dict[str, TestClient],
                                                                       schema: Any) -> None:
    statuses = []
    for method, path, body, headers in _requests(schema):
        short = _answer(clients["short"], method, path, body, headers)
        routed = _answer(clients["routed"], method, path, body, headers)
        assert short == routed, (method, path)
        statuses.append(short["status"])
    # the requests above really cover success and each kind of error (a check of the list, not of the server)
    assert {200, 400, 404, 405, 415, 422} <= set(statuses)


def test_the_scoring_routes_skip_fastapis_handler_and_other_routes_keep_it(
    clients: dict[str, TestClient], schema: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    solved: list[str] = []
    solve = fastapi.routing.solve_dependencies

    async def counting(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    body = json.dumps(rank_body(schema, n=4)).encode()
    for client in clients.values():
        answer = client.post("/rank/default", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 200
    assert solved == ["/rank/default"]  # the routed app's handler only
    assert clients["short"].get("/v1/models").status_code == 200
    assert solved == ["/rank/default", "/v1/models"]  # everything else still goes through FastAPI
