"""The HTTP transport's open connections: at most ``max_connections``, each one hostd Client.

Both servers report here as a connection opens and closes (hypercorn_server.py, uvicorn_server.py),
so the cap holds at accept time, before a request is parsed, and a connection's requests can be
cancelled the moment its client leaves, with no watcher task per request.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from hostd.auth import Principal
from hostd.clients import Client
from hostd.dataplane import MAX_REQUEST_ID, new_request_id
from hostd.ratelimitedlog import RateLimitedLog

log = structlog.get_logger("hostd.http")

#: A connection's peer as ASGI's scope["client"] names it: (host, port).
Peer = tuple[str, int]
#: The scope key of the Client of the request's connection (None outside a served connection).
CLIENT = "hostd.client"


#: The scope key of the principal (hostd.auth) the request's API key authenticated, if keys are checked.
PRINCIPAL = "hostd.principal"


_VISIBLE = re.compile(rb"[\x21-\x7e]+")
#: The scope key of the request's id (X-Request-Id): the client's, or None until one is made up.
REQUEST_ID = "hostd.request_id"


def client_request_id(scope: Scope) -> str | None:
    """The client's X-Request-Id, if it sent one that fits (else hostd makes one up)."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return value.decode() if fits(value) else None
    return None


def fits(request_id: bytes) -> bool:
    """A client's request id is used if it is 1-256 visible ASCII characters: it goes back in a header."""
    return len(request_id) <= MAX_REQUEST_ID and _VISIBLE.fullmatch(request_id) is not None


def request_id_of(scope: Scope, fallback: Any = None) -> str:
    """The request's id: the client's X-Request-Id, else ``fallback`` (an id in the body) if it fits,
    else a new one; the reply's X-Request-Id says the same."""
    request_id: str | None = scope.get(REQUEST_ID)
    if request_id is None:
        usable = isinstance(fallback, str) and fits(fallback.encode())
        request_id = scope[REQUEST_ID] = fallback if usable else new_request_id()
    return request_id


def sees(request: Request, model: str) -> bool:
    """Whether the request's key may see ``model`` (keys with a model allow-list see only those)."""
    principal: Principal | None = request.scope.get(PRINCIPAL)
    return principal is None or principal.sees(model)


def client_of(request: Request) -> Client | None:
    """The Client the request's connection is admitted as: pass it as ``client=`` to the data plane."""
    client: Client | None = request.scope.get(CLIENT)
    return client


def peer_of(transport: asyncio.BaseTransport) -> Peer | None:
    address: Any = transport.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:  # IPv4 (host, port), IPv6 (host, port, flow, scope)
        return str(address[0]), int(address[1])
    return None


class Connection:
    """One open connection: its Client (admission's view of it) and the requests it has in flight."""

    __slots__ = ("client", "gone", "peer", "tasks")

    def __init__(self, peer: Peer | None) -> None:
        self.peer = peer
        self.client = Client(f"{peer[0]}:{peer[1]}" if peer else "?")
        self.tasks: set[asyncio.Task[Any]] = set()
        self.gone = False

    def leave(self) -> None:
        """The client went (end of its stream, or the connection closed): cancel what it left behind;
        a request still queued leaves the queue without reaching the model."""
        if not self.gone:
            self.gone = True
            for task in self.tasks:
                task.cancel()

    async def serve(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one request of this connection; if the client leaves meanwhile, the handling is
        cancelled and, with no one left to answer, ends quietly."""
        if self.gone:
            return
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await app(scope, receive, send)
        except asyncio.CancelledError:
            if not self.gone or task.uncancel() > 0:  # cancelled by someone else (shutdown) too
                raise
        finally:
            self.tasks.discard(task)


class Connections:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[Peer, Connection] = {}
        self._none_open = asyncio.Event()
        self._none_open.set()
        self._refusals = RateLimitedLog(log)

    def __len__(self) -> int:
        return len(self._open)

    def get(self, peer: Peer | None) -> Connection | None:
        return self._open.get(peer) if peer is not None else None

    def open(self, peer: Peer | None) -> Connection | None:
        """A new connection from ``peer``, or None if ``limit`` are open already: close it at once."""
        if len(self._open) >= self.limit:
            self._refusals.warning("max_connections", "connection refused: max_connections are open",
                                   max_connections=self.limit)
            return None
        connection = Connection(peer)
        if peer is not None:
            self._open[peer] = connection
            self._none_open.clear()
        return connection

    def close(self, connection: Connection) -> None:
        connection.leave()
        if connection.peer is not None and self._open.get(connection.peer) is connection:
            del self._open[connection.peer]
        if not self._open:
            self._none_open.set()

    async def none_open(self) -> None:
        """Return once every connection has closed."""
        await self._none_open.wait()
