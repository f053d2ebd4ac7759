"""The inference routes served directly (service/rest/direct.py): the same answers as through
FastAPI, for every outcome, on the real app over a real DataPlane serving the digits bundle;
and DirectRoutes on its own, with an inner app that must not be reached."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from PIL import Image
from sklearn.datasets import load_digits
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from service.dataplane import DataPlane
from service.errors import NotFound
from service.metrics import Metrics
from service.repository import ModelRepository
from service.rest import create_app
from service.rest.direct import DirectRoutes, check_direct
from service.runtime import runtime_factory
from service.settings import Settings
from tests.service.stacks import in_process

pytestmark = pytest.mark.anyio

DIGITS = (load_digits().images[:3] / 16.0).astype(np.float32)[..., None]  # [3, 8, 8, 1]
MAX_BODY = 64 * 1024


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def _v2(images: np.ndarray, **extra: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "images", "datatype": "FP32",
                                   "shape": list(images.shape),
                                   "data": images.ravel().tolist()}], **extra}).encode()


# (method, path, headers, body): every outcome of the three inference APIs, and their
# neighbours that FastAPI must still answer (a GET of a POST route, an unknown verb).
CASES: list[tuple[str, str, dict[str, str], bytes]] = [
    ("POST", "/v2/models/digits/infer", {"content-type": "application/json"}, _v2(DIGITS)),
    ("POST", "/v2/models/digits/versions/1/infer", {}, _v2(DIGITS[:1], outputs=[
        {"name": "cluster_id"}])),
    ("POST", "/v2/models/digits/infer", {"content-type": "application/json"}, b"{not json"),
    ("POST", "/v2/models/digits/infer", {"content-type": "image/png"}, _png(DIGITS[0])),
    ("POST", "/v2/models/digits/infer", {"content-encoding": "gzip"}, _v2(DIGITS)),
    ("POST", "/v2/models/nope/infer", {}, _v2(DIGITS)),
    ("POST", "/v2/models/digits/versions/x/infer", {}, _v2(DIGITS)),
    ("POST", "/v2/models/digits/versions/7/infer", {}, _v2(DIGITS)),
    ("POST", "/v2/models/digits/infer", {}, b"[" + b"0.5," * 40_000 + b"0.5]"),  # 413
    ("POST", "/v1/models/digits:cluster", {"content-type": "image/png"}, _png(DIGITS[1])),
    ("POST", "/v1/models/digits/versions/1:cluster", {"content-type": "application/json"},
     json.dumps({"instances": [{"array": DIGITS[0].tolist()}]}).encode()),
    ("POST", "/v1/models/digits:cluster", {"content-type": "text/plain"}, b"hello"),
    ("POST", "/v1/models/digits:predict", {"content-type": "application/json"},
     json.dumps({"instances": DIGITS.tolist()}).encode()),
    ("POST", "/v1/models/digits/versions/1:predict", {},
     json.dumps({"inputs": DIGITS[:2].tolist()}).encode()),
    ("POST", "/v1/models/digits:predict", {}, json.dumps({"instances": [[1, 2]]}).encode()),
    ("POST", "/v1/models/digits:explain", {}, b"{}"),
    ("GET", "/v2/models/digits/infer", {}, b""),
    ("GET", "/v1/models/digits:cluster", {}, b""),
]


async def _stack(model_repo: Path, *, direct: bool) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(model_repo, max_batch_size=8, max_batch_delay_ms=2,
                          max_body_bytes=MAX_BODY) as served:
        if not direct:
            # The same app with every request going through FastAPI's routing: the reference.
            served.app.user_middleware = [m for m in served.app.user_middleware
                                          if m.cls is not DirectRoutes]
        async with served.client() as http:
            yield http


@pytest.fixture
async def direct(model_repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for http in _stack(model_repo, direct=True):
        yield http


@pytest.fixture
async def routed(model_repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for http in _stack(model_repo, direct=False):
        yield http


def _answer(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in response.headers.items() if k != "x-request-id"}
    body: Any = response.content
    if response.headers.get("content-type") == "application/json":
        body = response.json()
    return response.status_code, headers, body


async def test_direct_answers_are_the_routed_answers(direct: httpx.AsyncClient,
                                                     routed: httpx.AsyncClient) -> None:
    statuses = []
    for method, path, headers, body in CASES:
        got = _answer(await direct.request(method, path, headers=headers, content=body))
        want = _answer(await routed.request(method, path, headers=headers, content=body))
        assert got == want, (method, path)
        statuses.append(got[0])
    # The cases cover the outcomes they are meant to, not one status many times.
    assert {200, 400, 404, 405, 413, 415} <= set(statuses), statuses


def test_the_direct_routes_lead_the_app_so_they_match_what_the_router_would(
        model_repo: Path) -> None:
    settings = Settings(model_repo=model_repo, poll_seconds=0)
    metrics = Metrics()
    repository = ModelRepository(settings, metrics, runtime_factory("/CPU:0",
                                                                    settings.batch_sizes()))
    app = create_app(DataPlane(repository, settings, metrics), settings, metrics)
    [middleware] = [m for m in app.user_middleware if m.cls is DirectRoutes]
    routes: list[APIRoute] = middleware.kwargs["routes"]  # type: ignore[assignment]
    assert [route.name for route in routes] == ["v2_infer"] * 2 + ["cluster"] * 2 + \
        ["predict"] * 2
    # They keep the app's order, and no route before them answers POST: a POST the
    # middleware matches is one the router would have given the same route.
    positions = [app.router.routes.index(route) for route in routes]
    assert positions == sorted(positions)
    before = [r for r in app.router.routes[:positions[-1]] if r not in routes]
    assert before and all("POST" not in (getattr(r, "methods", None) or ()) for r in before)
    # The router's first full match for a POST of each route is that route.
    for route, path in zip(routes, ["/v2/models/m/infer", "/v2/models/m/versions/2/infer",
                                    "/v1/models/m:cluster", "/v1/models/m/versions/2:cluster",
                                    "/v1/models/m:predict", "/v1/models/m/versions/2:predict"],
                           strict=True):
        scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
        first = next(r for r in app.router.routes if r.matches(scope)[0] is Match.FULL)
        assert first is route, path


def _route(endpoint: Any, path: str = "/m/{name}:go") -> APIRoute:
    router = APIRouter()
    router.add_api_route(path, endpoint, methods=["POST"], name="go")
    [route] = router.routes
    assert isinstance(route, APIRoute)
    return route


async def _call(app: Any, method: str, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "root_path": "",
             "headers": [], "query_string": b""}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_direct_routes_answer_without_reaching_the_inner_app() -> None:
    reached: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await Response(b"inner", status_code=299)(scope, receive, send)

    async def go(request: Request, name: str) -> Response:
        if name == "missing":
            raise NotFound("model 'missing' is not in the repository")
        if name == "bug":
            raise RuntimeError("a bug")
        return Response(f"{name} {request.scope['route'].name}".encode())

    app = DirectRoutes(inner, routes=[_route(go)])
    assert await _call(app, "POST", "/m/abc:go") == (200, b"abc go")
    # A ServiceError is the error table's answer; anything else is the middleware's to log.
    status, body = await _call(app, "POST", "/m/missing:go")
    assert (status, json.loads(body)) == (404, {"error": "model 'missing' is not in the "
                                                         "repository"})
    with pytest.raises(RuntimeError, match="a bug"):
        await _call(app, "POST", "/m/bug:go")
    assert reached == []
    # Another method or path goes on to the inner app.
    assert await _call(app, "GET", "/m/abc:go") == (299, b"inner")
    assert await _call(app, "POST", "/m/abc:stop") == (299, b"inner")
    assert reached == ["/m/abc:go", "/m/abc:stop"]


def test_routes_that_need_fastapi_are_refused() -> None:
    async def query(request: Request, name: str, limit: int = 3) -> Response:
        return Response()

    async def typed(request: Request, name: int) -> Response:
        return Response()

    async def no_request(name: str) -> Response:
        return Response()

    def dependency() -> None:
        return None

    async def with_dependency(request: Request, name: str,
                              _: None = Depends(dependency)) -> Response:
        return Response()

    for endpoint, problem in ((query, "query parameters"), (typed, r"not str \(name\)"),
                              (no_request, "no Request parameter"),
                              (with_dependency, "dependencies")):
        with pytest.raises(ValueError, match=problem):
            check_direct(_route(endpoint))
    # An app-wide dependency reaches every route, so it is refused as well.
    app = FastAPI(dependencies=[Depends(dependency)])

    async def plain(request: Request, name: str) -> Response:
        return Response()

    app.add_api_route("/m/{name}:go", plain, methods=["POST"])
    with pytest.raises(ValueError, match="dependencies"):
        check_direct(app.router.routes[-1])  # type: ignore[arg-type]
