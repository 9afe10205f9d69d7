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

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
SPAN = "hostd.span"  # the scope key holding the request's span (its presence: the request is traced)
UNTRACED = ("/api/health", "/v2/health", "/metrics", "/api/stats", "/dashboard")  # polled, not served
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
        if scope["type"] != "http" or SPAN in scope or not wanted(scope):
            await self.app(scope, receive, send)
            return
        await traced(self.app, scope, receive, send)


def wanted(scope: Scope) -> bool:
    """Whether this request gets a span: tracing is on and it is not an operator's poll (a probe every few
    seconds, a scrape, the dashboard's second-by-second reading), which would bury the requests in traces."""
    return tracing.enabled() and not scope["path"].startswith(UNTRACED)


async def traced(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run ``app`` for one HTTP request under its server span."""
    method = scope["method"] if scope["method"] in METHODS else "_OTHER"  # as OpenTelemetry's conventions say
    route = route_of(scope["path"])
    # Named by its route once the answer shows a route took it (below); a path a client made up names none.
    span = tracing.begin(method, "http", _carrier(scope["headers"]), **{
        "http.request.method": method, "url.path": scope["path"]})
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

    outcome = "CANCELLED"  # unless an answer started: the client left, or the server is stopping
    try:
        with tracing.current(span):
            await app(scope, receive, send_noting_status)
    finally:
        code = status.get("code")
        if code is not None:
            outcome = "OK" if code < 400 else str(code)
            # An answer a route gave names the span by the route (a model's name as a placeholder). A refusal
            # before routing (401, an unknown model) or a path no route has (404) leaves the method alone:
            # a scanner's thousand paths would be a thousand span names.
            if code < 400 or (code != 404 and "endpoint" in scope):
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
        tracing.end(span, outcome, **{"http.response.status_code": code, "hostd.request_id": scope.get(REQUEST_ID)})


def _carrier(headers: list[tuple[bytes, bytes]]) -> dict[str, bytes]:
    """The trace headers. Two ``traceparent`` headers are no trace (W3C: start a new one); several
    ``tracestate`` headers are one list."""
    parents = [value for key, value in headers if key == b"traceparent"]
    if len(parents) != 1:
        return {}
    states = [value for key, value in headers if key == b"tracestate"]
    return {"traceparent": parents[0], "tracestate": b",".join(states)} if states else {"traceparent": parents[0]}


def route_of(path: str) -> str:
    for pattern, placeholder in _ROUTES:
        path, replaced = pattern.subn(placeholder, path, count=1)
        if replaced:
            break
    return path
