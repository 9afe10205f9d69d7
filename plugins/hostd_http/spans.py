"""A server span per HTTP request, continued from the caller's ``traceparent`` header (see hostd.tracing).

The transport's Front opens it (so a request it refuses before routing, unauthenticated or overloaded, is
traced too); the app's middleware opens it where there is no Front (Lambda). Named as OpenTelemetry's
HTTP conventions say, ``{method} {route}``, the route's model name and version as placeholders so the
names stay few.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hostd import tracing
from hostd_http.connections import REQUEST_ID

SPAN = "hostd.span"  # the scope key holding the request's span (its presence: the request is traced)
_ROUTES = [  # the path parts a client chooses, as route placeholders
    (re.compile(r"^/api/models/[^/]+"), "/api/models/{name}"),
    (re.compile(r"^/v2/models/[^/]+/versions/[^/]+"), "/v2/models/{name}/versions/{version}"),
    (re.compile(r"^/v2/models/[^/]+"), "/v2/models/{name}"),
    (re.compile(r"^/v2/repository/models/[^/]+"), "/v2/repository/models/{name}"),
]


class ServerSpans:
    """The app's middleware: a span for a request no Front has traced."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled() or SPAN in scope:
            await self.app(scope, receive, send)
            return
        await traced(self.app, scope, receive, send)


async def traced(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run ``app`` for one HTTP request under its server span."""
    carrier = {key.decode("latin-1"): value for key, value in scope["headers"]
               if key in (b"traceparent", b"tracestate")}
    method = scope["method"]
    route = route_of(scope["path"])
    span = tracing.begin(f"{method} {route}", "http", carrier, **{
        "http.request.method": method, "http.route": route, "url.path": scope["path"]})
    scope[SPAN] = span
    if span is None or not span.is_recording():  # not sampled: only the trace's context goes on
        with tracing.current(span):
            await app(scope, receive, send)
        tracing.end(span)
        return
    status: dict[str, Any] = {}

    async def send_noting_status(message: Message) -> None:
        if message["type"] == "http.response.start":
            status["code"] = message["status"]
        await send(message)

    try:
        with tracing.current(span):
            await app(scope, receive, send_noting_status)
    finally:
        code = status.get("code", 500)
        if code == 404 and "endpoint" not in scope and route == scope["path"]:
            # No route took it: its path is whatever the client sent, so it does not name the span (a
            # scanner's thousand paths would be a thousand span names).
            span.update_name(method)
            span.set_attribute("http.route", "")
        tracing.end(span, "OK" if code < 400 else str(code), **{
            "http.response.status_code": code, "hostd.request_id": scope.get(REQUEST_ID)})


def route_of(path: str) -> str:
    for pattern, placeholder in _ROUTES:
        path, replaced = pattern.subn(placeholder, path, count=1)
        if replaced:
            break
    return path
