"""The default server (``server: hypercorn``): HTTP/1.1 and HTTP/2, each connection served by
Hypercorn's own ``TCPServer``, accepted here.

hostd accepts the connections itself rather than through ``hypercorn.asyncio.serve`` for two things
Hypercorn does not offer: a cap on open connections (``max_connections``: one more is closed at once,
so descriptors stay for everyone else), and a drain that does not drop requests. Hypercorn's
``serve`` closes every idle kept-alive connection the moment it stops, so a request already on its
way there is lost unanswered; here the connections stay open until they close by themselves (after
a reply with ``Connection: close``, which the front gives every request during the drain, or at the
keep-alive timeout, as any time) or until the drain deadline.

Hypercorn's ``Config.read_timeout`` is no body timeout: it limits every wait for data, a reply the
model takes long over included, and closes without a word; front.py has the body timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config

from hostd.tls import server_context
from hostd_http.connections import Connection, Connections, peer_of
from hostd_http.front import Front

if TYPE_CHECKING:
    from hostd.transports import TransportContext
    from hostd_http.plugin import HttpSettings

#: After the drain deadline, how long the connections still busy get to write their last replies.
LAST_REPLIES_S = 1.0


async def serve_hypercorn(front: Front, ctx: TransportContext[HttpSettings], *,
                          task_status: TaskStatus[None]) -> None:
    settings = ctx.settings
    config = Config()  # explicit fields: Config.from_mapping would silently ignore a misspelt key
    config.bind = [f"{settings.host}:{settings.port}"]
    with ctx.binding("port", config.bind[0]):  # a taken port fails here, naming the setting
        sockets = config.create_sockets().insecure_sockets
    config.keep_alive_timeout = settings.keep_alive_timeout_s
    config.keep_alive_max_requests = settings.keep_alive_max_requests
    # Hypercorn's own lines go through stdlib logging, so they come out in hostd's format.
    config.accesslog = logging.getLogger("hypercorn.access") if settings.access_log else None
    config.errorlog = logging.getLogger("hypercorn.error")

    loop = asyncio.get_running_loop()
    context = WorkerContext(None)
    app = ASGIWrapper(front)  # type: ignore[arg-type]  # Hypercorn's ASGI types are its own TypedDicts
    tasks: set[asyncio.Task[Any]] = set()

    async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        # Cancelled here past the drain deadline: ends quietly (Python 3.11's asyncio would log an error).
        with contextlib.suppress(asyncio.CancelledError):
            await _TCPServer(app, loop, config, context, {}, reader, writer)

    protocol = partial(_Stream, front.connections, serve_connection)
    tls = server_context(settings.tls, ctx.daemon.folder, ["h2", "http/1.1"]) if settings.tls else None
    servers = [await loop.create_server(protocol, sock=sock, backlog=config.backlog, ssl=tls) for sock in sockets]
    task_status.started()
    try:
        await ctx.stop.wait()
        front.drain()
        for server in servers:
            server.close()  # accept no more
        with ctx.stop.until_deadline():
            await front.connections.none_open()
        await context.terminated.set()  # the deadline: idle connections close now, busy ones after their reply
        with anyio.move_on_after(LAST_REPLIES_S):
            await front.connections.none_open()
    finally:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)


class _TCPServer(TCPServer):
    async def _read_data(self) -> None:
        await super()._read_data()
        # The client has gone: close once its requests are done. Hypercorn (0.18) would keep the
        # connection, and its descriptor and place under the cap, until the keep-alive timer fired.
        await self.idle_task.stop()


class _Stream(asyncio.StreamReaderProtocol):
    """asyncio.start_server's protocol, counting the connection in (or closing it at once, over the
    cap) and telling it when its client leaves: at the end of its stream, as Hypercorn reads it."""

    def __init__(self, connections: Connections, serve: Any) -> None:
        super().__init__(asyncio.StreamReader(), serve)
        self._connections = connections
        self._connection: Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._connection = self._connections.open(peer_of(transport))
        if self._connection is None:
            transport.close()
            return
        super().connection_made(transport)

    def eof_received(self) -> bool:
        if self._connection is not None:
            self._connection.leave()
        return bool(super().eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._connection is not None:
            self._connections.close(self._connection)
        super().connection_lost(exc)
