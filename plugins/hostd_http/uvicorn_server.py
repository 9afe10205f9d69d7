"""The default HTTP server, uvicorn (``server: uvicorn``): raw HTTP/1.1 speed with httptools and uvloop.

It caps and drains like the hypercorn server (hypercorn_server.py): its protocol counts each
connection in (closing one over ``max_connections`` at once) and reports its client leaving; at the
stop it accepts no more and leaves open connections be until they close (after a reply with
``Connection: close``, or at the keep-alive timeout) or the drain deadline, only then telling
uvicorn to shut down (which closes idle connections at once).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from hostd.tls import server_context
from hostd_http.connections import Connection, Connections, peer_of
from hostd_http.front import Front

if TYPE_CHECKING:
    from hostd.transports import TransportContext
    from hostd_http.plugin import HttpSettings


async def serve_uvicorn(front: Front, ctx: TransportContext[HttpSettings], *,
                        task_status: TaskStatus[None]) -> None:
    import uvicorn  # here, not at the top: `server: hypercorn` never pays for its import

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the daemon owns the signals

    settings = ctx.settings
    config = uvicorn.Config(front, host=settings.host, port=settings.port, lifespan="off", log_config=None,
                            access_log=settings.access_log,
                            http=_counted(front.connections, settings.keep_alive_timeout_s),
                            # scope["client"] stays the connection's peer, as the front looks it up
                            proxy_headers=False,
                            timeout_keep_alive=max(1, int(settings.keep_alive_timeout_s)))
    # Bind here, so a taken port fails before anything else starts (uvicorn's own bind_socket
    # would sys.exit() with no word of which transport failed).
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with ctx.binding("port", f"{settings.host}:{settings.port}"):
        sock = socket.create_server((settings.host, settings.port), family=family)
    config.load()
    if settings.tls is not None:  # the one context builder every transport uses (HTTP/1.1: no h2)
        config.ssl = server_context(settings.tls, ctx.daemon.folder, ["http/1.1"])
    server = Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:
            await anyio.sleep(0.01)
        task_status.started()
        await ctx.stop.wait()
        front.drain()
        for listener in server.servers:
            listener.close()  # accept no more
        with ctx.stop.until_deadline():
            await front.connections.none_open()
        config.timeout_graceful_shutdown = 1  # the deadline: a moment to write the last replies
        server.should_exit = True


def _counted(connections: Connections, headers_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools), counting each connection in (or closing it at once, over
    the cap) and reporting it closed, which is when uvicorn sees its client leave; and closing a
    connection whose request headers do not arrive within ``headers_timeout_s`` of it opening or of
    the request's first byte (uvicorn has no such limit: a client sending headers a byte at a time
    held a connection for ever; hypercorn closes it at its keep-alive timeout)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    base: Any = HttpToolsProtocol

    class Counted(base):  # type: ignore[misc]
        _connection: Connection | None = None
        _headers_due: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            self._connection = connections.open(peer_of(transport))
            if self._connection is None:
                transport.close()
                return
            super().connection_made(transport)
            self._expect_headers()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._expect_headers()

        def on_headers_complete(self) -> None:
            self._headers_in()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._connection is None:
                return  # refused: uvicorn never saw it
            self._headers_in()
            super().connection_lost(exc)
            connections.close(self._connection)

        def _expect_headers(self) -> None:
            self._headers_in()
            self._headers_due = self.loop.call_later(headers_timeout_s, self.transport.close)

        def _headers_in(self) -> None:
            if self._headers_due is not None:
                self._headers_due.cancel()
                self._headers_due = None

    return Counted
