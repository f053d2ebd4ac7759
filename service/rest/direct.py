"""The inference routes, served straight from their endpoint functions.

FastAPI's per-request machinery - its exception and exit-stack middlewares, the router's
walk, dependency solving and the endpoint wrapper - cost about 100 µs of event-loop CPU per
request, a quarter of a V2 JSON inference request's (issue 38, measured in-process with
the real model at 32 concurrent requests, three alternating pairs: 353-375 → 250-282 µs).
The inference endpoints need none of it: they take the request and their path segments as
strings, read and check the body themselves, and return a finished :class:`Response`.
:class:`DirectRoutes` sits inside the request-context and token middlewares, matches those
routes itself and calls their endpoints; every other request goes on to FastAPI. The routes
stay registered on the app as well, so ``/docs`` and the OpenAPI document describe them as
before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ServiceError
from service.rest.encoding import logged_error_response

Endpoint = Callable[..., Awaitable[Response]]


def check_direct(route: APIRoute) -> None:
    """Refuse a route whose endpoint needs FastAPI to call it.

    A direct route's endpoint takes the :class:`Request` and its path parameters as plain
    strings, and nothing else: no query, header, cookie or body parameters, no dependencies,
    no background tasks. Anything more would be silently skipped when called directly.
    """
    dependant = route.dependant
    needs_fastapi = [
        kind for kind, params in (
            ("query parameters", dependant.query_params),
            ("header parameters", dependant.header_params),
            ("cookie parameters", dependant.cookie_params),
            ("body parameters", dependant.body_params),
            ("dependencies", dependant.dependencies),
        ) if params
    ]
    if dependant.request_param_name is None:
        needs_fastapi.append("no Request parameter")
    if dependant.background_tasks_param_name or dependant.response_param_name:
        needs_fastapi.append("background tasks or a Response parameter")
    typed = [param.name for param in dependant.path_params
             if param.field_info.annotation is not str]
    if typed:
        needs_fastapi.append(f"path parameters that are not str ({', '.join(typed)})")
    if needs_fastapi:
        raise ValueError(f"route {route.path} cannot be served directly: "
                         f"{'; '.join(needs_fastapi)}")


class DirectRoutes:
    """ASGI middleware: answers requests to ``routes`` by calling their endpoints directly.

    ``routes`` keep the app's order, and no other route before them serves their methods,
    so that a request matches here exactly the route FastAPI's router would have picked
    (create_app registers the inference routes first; a test checks the order). A
    :class:`ServiceError` is answered from the error table as the app's handler answers it;
    anything else propagates to the request-context middleware, which logs it and answers
    500.
    """

    def __init__(self, app: ASGIApp, *, routes: Sequence[APIRoute]) -> None:
        for route in routes:
            check_direct(route)
        self.app = app
        self._routes = list(routes)
        self._methods = frozenset(m for route in routes for m in (route.methods or ()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in self._methods:
            for route in self._routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    response = await _answer(route.endpoint, Request(scope, receive),
                                             child["path_params"])
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def _answer(endpoint: Endpoint, request: Request, path_params: dict[str, Any]) -> Response:
    try:
        return await endpoint(request, **path_params)
    except ServiceError as exc:
        return logged_error_response(exc)
