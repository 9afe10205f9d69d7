"""A server span per HTTP request, continued from the caller's ``traceparent`` (see hostd.tracing)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class ServerSpans:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
