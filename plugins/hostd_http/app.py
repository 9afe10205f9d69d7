"""The Starlette application: the author's API under /api and OIP v2 under /v2, each answering errors
in its own format, plus /metrics, the docs and the dashboard."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hostd.dataplane import DataPlane
from hostd.settings import HostSettings
from hostd_http import dashboard, docs, rest, v2
from hostd_http.connections import REQUEST_ID, client_request_id, request_id_of
from hostd_http.front import error_body_of
from hostd_http.responses import ErrorBody, Handler, error_handlers
from hostd_http.spans import ServerSpans


def create_app(dataplane: DataPlane, host: HostSettings, max_body: int = 1 << 20) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(dataplane.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def root(request: Request) -> Response:
        return RedirectResponse("/docs")

    return compose(
        api=rest.routes(dataplane, max_body),
        oip=v2.routes(dataplane, max_body),
        oip_root=[Route("/v2", v2.server_metadata)],
        other=[
            *docs.routes(dataplane, host.service_title, host.description),
            *dashboard.routes(),
            Route("/metrics", metrics),
            Route("/", root, include_in_schema=False),
        ],
    )


def compose(api: Sequence[BaseRoute], oip: Sequence[BaseRoute], oip_root: Sequence[BaseRoute],
            other: Sequence[BaseRoute]) -> Starlette:
    """The HTTP URL space, each part answering its errors in its protocol's format: ``api`` (paths relative
    to /api) as the author's API, ``{"type", "messages"}``; ``oip`` (relative to /v2/) and ``oip_root``
    (/v2 itself, which a Mount does not take) as OIP v2, ``{"error", "code", "details"}``; ``other``
    (docs, metrics, anything else) as the author's API."""
    oip_errors = _errors_as(v2.error_body)
    return Starlette(
        middleware=[Middleware(ServerSpans), Middleware(RequestIds)],
        # The mounts first and one level deep, prediction/infer first in each: a prediction is 2 or 3 path
        # matches from the top (it was 7, and 13 for /v2 infer, when every route sat in one flat list).
        routes=[
            Mount("/api", routes=api, middleware=_errors_as(rest.error_body)),
            Mount("/v2", routes=oip, middleware=oip_errors),
            Route("/v2", Router(routes=oip_root, middleware=oip_errors)),
            *other,
        ],
        exception_handlers=_top_level_handlers(),
    )


class RequestIds:
    """Every reply names its request's id in ``X-Request-Id``: the client's, else one made up (see
    connections.request_id_of); the data plane logs the request under it, and feedback names it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if REQUEST_ID not in scope:  # the transport's Front reads it first; Lambda has no Front
            scope[REQUEST_ID] = client_request_id(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", request_id_of(scope).encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def _top_level_handlers() -> dict[type[Exception], Handler]:
    """What no route took, answered in the author's API format, or OIP v2's under /v2: a /v2 path the
    Mount does not match (its ``.*`` stops at a newline in a parameter) still gets v2's error body."""
    handlers: dict[ErrorBody, Mapping[type[Exception], Handler]] = {
        body: error_handlers(body) for body in (rest.error_body, v2.error_body)}

    def by_path(kind: type[Exception]) -> Handler:
        async def handle(request: Request, exc: Exception) -> Response:
            return await handlers[error_body_of(request.url.path)][kind](request, exc)
        return handle

    return {kind: by_path(kind) for kind in handlers[rest.error_body]}


def _errors_as(body: ErrorBody) -> list[Middleware]:
    return [Middleware(ExceptionMiddleware, handlers=error_handlers(body))]
