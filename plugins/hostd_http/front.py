"""The raw ASGI front of the HTTP app: what is decided before routing or reading a request body.

- A prediction the data plane would refuse now (overloaded, not ready, no such model) is answered
  at once, from the path alone: no routing, no body read, no JSON parsed. Under overload most
  requests are refused, so a refusal must cost next to nothing.
- The body must arrive within ``body_timeout_s`` of the headers, else 408 and the connection closes:
  a client that stalls mid-body cannot hold a connection (and a file descriptor) for ever.
- While the transport drains, every request gets 503 NOT_READY with ``Connection: close`` (so a
  kept-alive client knows to stop, rather than find its next request dropped), and a body still
  arriving is cut off at once instead of holding the drain.
- A connection refused OVERLOADED (or RATE_LIMITED, UNAUTHENTICATED, FORBIDDEN) again and again gets
  each further refusal after a doubling pause (hostd.refusals), so the event loop serves the admitted
  requests instead of answering refusals; a pause never holds the drain.
- Who may do what (hostd.auth): the API key of ``Authorization: Bearer <key>`` is checked against the
  scope the path needs (and the model it names), and the key's rate limit taken, before anything
  else: 401 UNAUTHENTICATED (with WWW-Authenticate), 403 FORBIDDEN, 429 RATE_LIMITED (Retry-After).
- Each request runs as its connection's (connections.py): admitted with its Client, cancelled if
  the client leaves.
- A refusal carries the request's ``X-Request-Id``, as every other reply does (app.RequestIds).
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hostd.auth import Guard, bearer_key
from hostd.auth import Scope as AuthScope
from hostd.clients import Client
from hostd.dataplane import DataPlane, State, new_request_id
from hostd.errors import HostdError, NotReady, RateLimited
from hostd.refusals import HELD_BACK, LONGEST_PAUSE_S
from hostd_http import dashboard, rest, spans, v2
from hostd_http.connections import (
    CLIENT,
    PRINCIPAL,
    REQUEST_ID,
    Connection,
    Connections,
    client_request_id,
    request_id_of,
)
from hostd_http.responses import ErrorBody, error_response


class Front:
    def __init__(self, app: ASGIApp, dataplane: DataPlane, connections: Connections, *,
                 body_timeout_s: float) -> None:
        self.app = app
        self.dataplane = dataplane
        self.connections = connections
        self.body_timeout_s = body_timeout_s
        self.draining = False
        self.reading: set[asyncio.Timeout] = set()  # of the requests waiting for more of their body
        self.pausing: set[asyncio.Future[None]] = set()  # of the refusals held back (woken by drain)

    def drain(self) -> None:
        """From now on answer every request 503 NOT_READY, Connection: close; cut off bodies still arriving."""
        self.draining = True
        now = asyncio.get_running_loop().time()
        for timeout in list(self.reading):
            timeout.reschedule(now)
        for pause in self.pausing:
            if not pause.done():
                pause.set_result(None)

    @property
    def closing(self) -> bool:
        """Whether replies tell clients to close: from the moment the daemon drains (the data plane
        knows a moment before this transport's drain() runs, and answers NOT_READY meanwhile)."""
        return self.draining or self.dataplane.state is State.DRAINING

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if spans.wanted(scope):
            await spans.traced(self._serve, scope, receive, send)
        else:
            await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection = self.connections.get(scope.get("client"))
        client = connection.client if connection is not None else None
        scope[CLIENT] = client
        scope[REQUEST_ID] = client_request_id(scope)  # refusals below are logged under it
        target = _prediction(scope)
        refusal = self._refusal(scope, target, client)
        if isinstance(refusal, RateLimited) and connection is not None:
            # Wait for the key's next token, then look again: a client over its rate is slowed to it
            # (shaped) rather than answered refusals as fast as it can send.
            await self._wait(min(refusal.retry_after_s, LONGEST_PAUSE_S))
            refusal = self._refusal(scope, target, client)
            if refusal is None:
                connection.client.refusals.end()  # it got in at its rate: its next refusal is not held back long
        if refusal is not None:
            if isinstance(refusal, HELD_BACK) and connection is not None:
                await self._pause(connection)
            await self._refuse(scope, receive, send, refusal)
            return
        exchange = _Exchange(self, scope, receive, send)
        if connection is None:
            await self.app(scope, exchange.receive, exchange.send)
        else:
            await connection.serve(self.app, scope, exchange.receive, exchange.send)

    def _refusal(self, scope: Scope, target: tuple[str, str | None] | None, client: Client | None,
                 ) -> HostdError | None:
        """Why this request is answered at once, without routing or reading its body (None: it goes on)."""
        if self.draining:
            return NotReady("hostd is shutting down; not accepting requests")
        if self.dataplane.guard.active and (denied := self._denied(scope, target)) is not None:
            return denied
        if target is None:
            return None
        # The id a refusal is logged and answered under; one that goes on keeps the client's, or none yet
        # (OIP v2 then takes the body's id).
        request_id = scope[REQUEST_ID] or new_request_id()
        refused = self.dataplane.refusal(*target, transport="http", client=client, request_id=request_id)
        if refused is not None:
            scope[REQUEST_ID] = request_id
        return refused

    def _denied(self, scope: Scope, target: tuple[str, str | None] | None) -> HostdError | None:
        """Why the guard refuses this request (None: it may go on)."""
        needed = _needs(scope["path"], self.dataplane.guard, target)
        if needed is None:
            return None
        peer = scope.get("client")
        try:
            scope[PRINCIPAL] = self.dataplane.guard.check(_bearer(scope), *needed, peer=peer[0] if peer else "")
        except HostdError as exc:
            return exc
        return None

    async def _pause(self, connection: Connection) -> None:
        """Hold back a connection's refusal if the one before was a refusal too (see the module's doc)."""
        seconds = connection.client.refusals.pause_s(asyncio.get_running_loop().time())
        if seconds and not self.draining:
            await self._wait(seconds)

    async def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or until the transport drains."""
        pause = asyncio.get_running_loop().create_future()
        self.pausing.add(pause)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await pause
        finally:
            self.pausing.discard(pause)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, refusal: HostdError) -> None:
        response = error_response(error_body_of(scope["path"]), refusal)
        response.headers["x-request-id"] = request_id_of(scope)
        if not _http1(scope):
            # hypercorn (0.18) fails a whole HTTP/2 connection, every stream on it, when DATA comes for a
            # stream it has answered (a KeyError in H2Protocol._handle_events): take the body first.
            await _read_body(scope, receive, 0 if self.draining else self.body_timeout_s)
        elif self.closing or not await _read_body(scope, receive, 0):
            response.headers["connection"] = "close"
        await response(scope, receive, send)


class _Exchange:
    """One request's receive and send as the app sees them: the body must arrive by a deadline (cut
    short when the transport drains); the reply says Connection: close if the connection closes after it."""

    __slots__ = ("_body_done", "_close", "_deadline", "_front", "_http1", "_receive", "_send")

    def __init__(self, front: Front, scope: Scope, receive: Receive, send: Send) -> None:
        self._front = front
        self._receive = receive
        self._send = send
        self._http1 = _http1(scope)
        self._deadline: float | None = None
        self._body_done = False
        self._close = False

    async def receive(self) -> Message:
        if self._body_done:
            return await self._receive()
        front = self._front
        now = asyncio.get_running_loop().time()
        if self._deadline is None:
            self._deadline = now + front.body_timeout_s
        try:
            async with asyncio.timeout_at(now if front.draining else self._deadline) as timeout:
                front.reading.add(timeout)
                try:
                    message = await self._receive()
                finally:
                    front.reading.discard(timeout)
        except TimeoutError:
            self._close = True
            if front.draining:
                raise NotReady("hostd is shutting down; the rest of the request body was not read") from None
            raise HTTPException(408, f"the request body did not arrive within {front.body_timeout_s:g} s") from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._body_done = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and self._http1 and (self._close or self._front.closing):
            message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        await self._send(message)


def _prediction(scope: Scope) -> tuple[str, str | None] | None:
    """(model, version) if the request is a prediction: POST /api/models/{name}/prediction[?version=],
    /v2/models/{name}/infer or /v2/models/{name}/versions/{version}/infer (the routes' own patterns)."""
    if scope["method"] != "POST":
        return None
    parts = scope["path"].split("/")
    if len(parts) == 5 and parts[2] == "models" and parts[3]:
        if parts[1] == "api" and parts[4] == "prediction":
            query = scope.get("query_string")
            return parts[3], QueryParams(query).get("version") if query else None
        if parts[1] == "v2" and parts[4] == "infer":
            return parts[3], None
    elif len(parts) == 7 and parts[1:3] == ["v2", "models"] and parts[4] == "versions" and parts[6] == "infer" \
            and parts[3] and parts[5]:
        return parts[3], parts[5]
    return None


HEALTH = frozenset({"/api/health", "/api/health/ready", "/api/health/startup", "/v2/health/live",
                    "/v2/health/ready"})


def _needs(path: str, guard: Guard, prediction: tuple[str, str | None] | None) -> tuple[AuthScope, str | None] | None:
    """The scope a request for ``path`` needs and the model it names; None if it is open to all."""
    if prediction is not None:
        return AuthScope.INFER, prediction[0]
    if path in HEALTH:
        return None if guard.open_to("health") else (AuthScope.READ, None)
    if path == "/metrics":
        return None if guard.open_to("metrics") else (AuthScope.READ, None)
    if path in ("/", "/docs", "/openapi.json") or path.startswith("/docs/"):
        return None if guard.open_to("docs") else (AuthScope.READ, None)
    if path == dashboard.PAGE or path.startswith(f"{dashboard.STATIC}/"):
        # Open to all: the page and its assets are the same static files for everyone, with no data in
        # them (the figures come from /api/stats, under the read scope), and a browser opening a page sends
        # no Authorization header. The page sends its key itself, with each request for the figures.
        return None
    parts = path.split("/")
    if path == "/api/admin/reload":
        return AuthScope.ADMIN, None
    if len(parts) == 6 and parts[1:4] == ["v2", "repository", "models"] and parts[5] in ("load", "unload"):
        return AuthScope.ADMIN, parts[4]
    if len(parts) == 5 and parts[1:3] == ["api", "models"] and parts[4] == "feedback":
        return AuthScope.INFER, parts[3]  # a label, from whoever may ask the model for predictions
    if len(parts) >= 4 and parts[1] in ("api", "v2") and parts[2] == "models" and parts[3]:
        return AuthScope.READ, parts[3]  # a model's metadata or readiness
    return AuthScope.READ, None


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bearer_key(value.decode("latin-1"))
    return None


def error_body_of(path: str) -> ErrorBody:
    """The error format of the route at ``path`` (as app.compose mounts them)."""
    return v2.error_body if path == "/v2" or path.startswith("/v2/") else rest.error_body


def _http1(scope: Scope) -> bool:
    return scope.get("http_version") in ("1.1", "1.0")  # HTTP/2 forbids a Connection header


async def _read_body(scope: Scope, receive: Receive, wait_s: float) -> bool:
    """Read (and drop) the request body, waiting at most ``wait_s`` for it: True if all of it came.
    With ``wait_s`` 0, only what has arrived is read: then False means more is to come, and the
    connection must close after the reply (refusing costs no wait for a slow or stalled client)."""
    if wait_s == 0 and any(name == b"expect" for name, _ in scope["headers"]):
        return False  # 100-continue: reading would invite the body the client holds back
    try:
        async with asyncio.timeout(wait_s):  # a message already here is returned before this expires
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return False
                if not message.get("more_body", False):
                    return True
    except TimeoutError:
        return False
