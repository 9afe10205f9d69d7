"""The WebSocket transport (websockets): the JSON envelope, many requests in flight per connection.

Replies carry the request's ``id`` and may arrive out of order. What a connection received in one burst
is answered as one group (hostd.readahead). A connection reads a new frame only while it has fewer
than ``max_in_flight`` requests unanswered, and a reply waits while the client's
socket buffer is full, so a client that stops reading cannot make the daemon buffer without bound; one
that has not read for ``send_timeout_s`` while a reply waits is dropped. Each connection is one
``Client`` to admission; when it closes, its requests still unanswered are cancelled.
"""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from http import HTTPStatus
from weakref import WeakKeyDictionary

import anyio
import structlog
from anyio.abc import TaskStatus
from pydantic import BaseModel, ConfigDict, Field
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from hostd import envelope
from hostd.auth import Principal, Scope, bearer_key
from hostd.clients import Client
from hostd.corked import Corked
from hostd.dataplane import DataPlane
from hostd.errors import ErrorCode, Forbidden, HostdError
from hostd.hookspecs import RegisterTransport, hookimpl
from hostd.readahead import ReadAhead
from hostd.tasks import BoundedTasks
from hostd.tls import TlsSettings, server_context
from hostd.transports import Shutdown, Transport, TransportContext

log = structlog.get_logger("hostd.ws")


class WebSocketSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    max_message_bytes: int = Field(default=1 << 20, ge=1024)  # bigger frames close with 1009
    max_in_flight: int = Field(default=256, ge=1)  # per connection
    # Connections open at once; one more is refused at its handshake with 503 (so each costs only a
    # socket until then: handshakes still under way are not counted).
    max_connections: int = Field(default=1024, ge=1)
    ping_interval_s: float | None = Field(default=20.0, gt=0)
    ping_timeout_s: float | None = Field(default=20.0, gt=0)
    idle_timeout_s: float | None = Field(default=None, gt=0)  # close after this long without a frame
    # A reply that cannot be written for this long (the client stopped reading) drops the connection;
    # also how long a closing handshake may take, so such a client cannot hold up the shutdown.
    send_timeout_s: float = Field(default=5.0, gt=0)
    tls: TlsSettings | None = None  # wss://, with mutual TLS if client_ca is set


class CorkedConnection(ServerConnection):
    """Replies finished in one turn of the event loop leave in one write (hostd.corked)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(Corked(transport))  # type: ignore[arg-type]  # a transport by duck typing


class _Left(Exception):
    """The client closed the connection: its unanswered requests are cancelled."""


class Connections:
    """Serves each connection; on shutdown stops reading, answers what it read, then closes (1001)."""

    def __init__(self, dataplane: DataPlane, settings: WebSocketSettings, drain: Shutdown) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.drain = drain  # each connection answers what it read by the drain deadline
        self.readers: set[anyio.CancelScope] = set()
        self.stopping = False
        self.principals: WeakKeyDictionary[ServerConnection, Principal] = WeakKeyDictionary()  # at the handshake
        self.server: Server | None = None

    def admit(self, ws: ServerConnection, request: Request) -> Response | None:
        """Before the upgrade: under ``max_connections`` (else 503), and, with API keys, the
        handshake's ``Authorization: Bearer <key>`` (401, or 403 with no scope to predict or read, or
        429), so a client without a key never gets a WebSocket."""
        if self.server is not None and len(self.server.connections) >= self.settings.max_connections:
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                              f"OVERLOADED: {self.settings.max_connections} connections are open (max_connections)\n")
        guard = self.dataplane.guard
        if not guard.active:
            return None
        key = bearer_key(request.headers.get("Authorization"))
        peer = str((ws.remote_address or ("",))[0])
        try:
            principal = guard.authenticate(key)
            if not ({Scope.INFER, Scope.READ} & principal.scopes):
                raise Forbidden(f"key '{principal.name}' has neither the 'infer' nor the 'read' scope")
            guard.admit(principal.name if guard.required else f"address {peer}")
        except HostdError as exc:
            status = {ErrorCode.UNAUTHENTICATED: 401, ErrorCode.FORBIDDEN: 403}.get(exc.code, 429)
            response = ws.respond(HTTPStatus(status), f"{exc.code.value}: {exc.message}\n")
            if status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="hostd"'
            return response
        self.principals[ws] = principal
        return None

    def stop_reading(self) -> None:
        self.stopping = True
        for reader in self.readers:
            reader.cancel()

    async def serve(self, ws: ServerConnection) -> None:
        reason = "server shutting down"
        address = ws.remote_address or ()
        client = Client(":".join(map(str, address)), self.principals.pop(ws, None),
                        str(address[0]) if address else None)
        ahead: ReadAhead[str | bytes] = ReadAhead(self.settings.max_in_flight)
        try:
            async with BoundedTasks(self.settings.max_in_flight, self.drain) as replies:
                grouping = asyncio.create_task(self._answer_groups(ws, ahead, replies, client))
                try:
                    with anyio.CancelScope() as reader:
                        self.readers.add(reader)
                        if self.stopping:
                            reader.cancel()
                        try:
                            reason = await self._read(ws, ahead)
                        finally:
                            self.readers.discard(reader)
                finally:
                    ahead.close()
                    if reason == "closed":
                        grouping.cancel()
                    await asyncio.wait({grouping})
                    if not grouping.cancelled() and (failure := grouping.exception()) is not None:
                        raise failure
                if reason == "closed":
                    raise _Left  # cancels the replies no one can receive, before they reach the model
        except _Left:
            return
        await ws.close(1001 if self.stopping else 1000, reason)

    async def _read(self, ws: ServerConnection, ahead: ReadAhead[str | bytes]) -> str:
        idle = self.settings.idle_timeout_s
        while True:
            try:
                with anyio.fail_after(idle) if idle else nullcontext():
                    frame = await ws.recv()
            except TimeoutError:
                return "idle timeout"
            except ConnectionClosed:
                return "closed"
            if ws.state is not State.OPEN:  # it said goodbye (a close frame): no reply can reach it
                return "closed"
            await ahead.put(frame)

    async def _answer_groups(self, ws: ServerConnection, ahead: ReadAhead[str | bytes], replies: BoundedTasks,
                             client: Client) -> None:
        async for group in ahead.groups():
            await replies.spawn(self._reply(ws, group, ahead, client))

    async def _reply(self, ws: ServerConnection, group: list[str | bytes], ahead: ReadAhead[str | bytes],
                     client: Client) -> None:
        async def reply(_: int, answer: bytes) -> None:
            if ws.state is not State.OPEN:  # closing: a send would wait for the close to finish
                return
            if ws.transport.get_write_buffer_size() + len(answer) <= ws.transport.get_write_buffer_limits()[1]:
                await ws.send(answer, text=True)  # fits below the high-water mark: no wait (the common case)
            else:
                await self._send_or_drop(ws, answer, client)

        try:
            await envelope.handle_all(self.dataplane, group, "ws", reply, client=client)
        except* ConnectionClosed:
            log.debug("client left before its reply", client=client.label)
        finally:
            ahead.answered(len(group))

    async def _send_or_drop(self, ws: ServerConnection, reply: bytes, client: Client) -> None:
        """Send a reply that may wait for the client to read; drop the connection if it does not."""
        try:
            async with asyncio.timeout(self.settings.send_timeout_s):
                await ws.send(reply, text=True)
        except TimeoutError:
            log.info("client stopped reading its replies; dropping the connection", client=client.label,
                     send_timeout_s=self.settings.send_timeout_s)
            ws.transport.abort()


async def serve_ws(ctx: TransportContext[WebSocketSettings], *, task_status: TaskStatus[None]) -> None:
    settings = ctx.settings
    connections = Connections(ctx.dataplane, settings, ctx.stop)
    with ctx.binding("port", f"{settings.host}:{settings.port}"):
        tls = server_context(settings.tls, ctx.daemon.folder, ["http/1.1"]) if settings.tls else None
        server = await serve(connections.serve, settings.host, settings.port, max_size=settings.max_message_bytes,
                             ssl=tls, process_request=connections.admit,
                             ping_interval=settings.ping_interval_s, ping_timeout=settings.ping_timeout_s,
                             close_timeout=settings.send_timeout_s, create_connection=CorkedConnection)
    connections.server = server
    async with server:
        task_status.started()
        await ctx.stop.wait()
        server.close(close_connections=False)  # stop accepting; connections finish below
        connections.stop_reading()
        with ctx.stop.until_deadline():
            await server.wait_closed()
        # Past the deadline: a client that stopped reading would block its close handshake
        # (and the process exit) forever, so drop what is left.
        for connection in server.connections:
            connection.transport.abort()


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    register(Transport(name="ws", settings=WebSocketSettings, serve=serve_ws))
