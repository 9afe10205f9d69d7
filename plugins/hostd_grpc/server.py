"""grpclib's Server, hardened: no leak per cancelled stream, a cap on connections, one Client each.

**The leak (grpclib 0.4.9).** ``EventsProcessor.process_request_received`` (grpclib/protocol.py:580)
registers every new stream in ``EventsProcessor.streams`` and hands ``Handler.accept``
(grpclib/server.py:470) a ``release_stream`` that only ``request_handler``'s ``finally``
(grpclib/server.py:436) calls. A RST_STREAM that arrives in the same read as its HEADERS makes
``process_stream_reset`` call ``Handler.cancel`` (grpclib/server.py:476) before the task has run a
step: the coroutine is closed without entering its ``try``, ``release_stream`` never runs, and the
``protocol.Stream`` (its Buffer, asyncio Queue and three Events, ~10 KB) stays in
``EventsProcessor.streams`` for the life of the connection. After the connection closes it still
stays: ``Handler._cancelled`` keeps the done task, whose CancelledError's traceback holds the
``request_handler`` frame (and so ``release_stream`` -> the EventsProcessor -> every stream it
registered), and ``Server._handlers`` keeps the Handler until the server's every-10th-connection sweep.
What upstream should change: release the stream from a done callback of the handler task (or in
``Handler.cancel`` when the task has not started), and drop done tasks from ``_tasks``/``_cancelled``
then instead of in the periodic ``__gc_collect__``. ``_Handler`` below does exactly that.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import structlog
from grpclib import server as grpclib_server
from grpclib.config import Configuration
from grpclib.protocol import Connection, H2Protocol
from grpclib.protocol import Stream as H2Stream
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes

from hostd.clients import Client
from hostd.corked import Corked
from hostd.ratelimitedlog import RateLimitedLog

log = structlog.get_logger("hostd.grpc")
_clients: weakref.WeakKeyDictionary[Connection, Client] = weakref.WeakKeyDictionary()
#: grpclib's default, and the lower bound HTTP/2 allows is 64 KiB.
CONNECTION_WINDOW = 4 << 20
MIN_WINDOW = 1 << 16
#: A new connection has this long to send the HTTP/2 preface and its first frame (the HTTP
#: transport closes a connection whose request headers are not in after 6 s).
HANDSHAKE_S = 10
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9


def client_of(stream: grpclib_server.Stream[Any, Any]) -> Client:
    """The Client of the HTTP/2 connection ``stream`` came on: one per connection, for admission."""
    connection = stream._stream.connection
    client = _clients.get(connection)
    if client is None:
        addr = stream.peer.addr()
        client = _clients[connection] = Client(f"{addr[0]}:{addr[1]}" if addr else "grpc")
    return client


def window_config(max_request_bytes: int) -> Configuration:
    """Flow control: a stream may send what one request may hold (a unary call sends one message,
    the 5-byte prefix included) and no more before the server reads it; a connection 4 MiB."""
    stream_window = min(max(max_request_bytes + 5, MIN_WINDOW), CONNECTION_WINDOW)
    return Configuration(http2_connection_window_size=CONNECTION_WINDOW, http2_stream_window_size=stream_window)


class _Handler(grpclib_server.Handler):
    """Releases every stream when its handler task ends, however it ends (see the module docstring),
    and leaves the server's set of handlers as soon as its connection is closed and its tasks are done."""

    def __init__(self, server: HostdServer) -> None:
        super().__init__(server._mapping, server._codec, server._status_details_codec, server.__dispatch__)
        self.server = server

    def accept(self, stream: H2Stream, headers: list[tuple[str, str]], release_stream: Callable[[], Any]) -> None:
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                release_stream()

        super().accept(stream, headers, release)
        self._tasks[stream].add_done_callback(partial(self._done, stream, release))

    def _done(self, stream: H2Stream, release: Callable[[], None], task: Any) -> None:
        release()  # a no-op if request_handler's finally ran
        if self._tasks.get(stream) is task:
            del self._tasks[stream]
        self._cancelled.discard(task)
        self.forget_if_done()

    def forget_if_done(self) -> None:
        if self.closing and not self._tasks and not self._cancelled:
            self.server._handlers.discard(self)

    def cancel(self, stream: H2Stream) -> None:
        task = self._tasks.pop(stream, None)
        if task is not None and not task.done():
            task.cancel()
            self._cancelled.add(task)


class _Protocol(H2Protocol):
    """Counts itself in ``server.connections``; over ``max_connections`` a connection gets a GOAWAY
    (ENHANCE_YOUR_CALM, "too many connections") and is closed before any stream is read. A connection
    that has not sent the HTTP/2 preface and its SETTINGS within ``HANDSHAKE_S`` is closed."""

    refused = False
    _handshake: asyncio.TimerHandle | None = None
    _received = 0  # bytes, until the handshake is in

    def __init__(self, server: HostdServer, handler: _Handler, config: Configuration,
                 h2_config: H2Configuration) -> None:
        super().__init__(handler, config, h2_config)
        self.server, self.hostd_handler = server, handler

    def connection_made(self, transport: Any) -> None:
        if self.server.connections >= self.server.max_connections:
            self.refused = True
            self.hostd_handler.close()
            self.hostd_handler.forget_if_done()
            _goaway(transport, b"too many connections")
            self.server.refused.warning("connections", "gRPC connection refused: too many connections",
                                        max_connections=self.server.max_connections)
            return
        self.server.connections += 1
        super().connection_made(Corked(transport))  # type: ignore[arg-type]  # a transport by duck typing
        self._handshake = asyncio.get_running_loop().call_later(HANDSHAKE_S, self._handshake_timeout, transport)

    def _handshake_timeout(self, transport: Any) -> None:
        _goaway(transport, b"no HTTP/2 preface and SETTINGS within %d s" % HANDSHAKE_S)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self._handshake is not None:
            self._received += len(data)
            if self._received >= len(PREFACE) + FRAME_HEADER:  # h2 rejects a wrong preface or first frame
                self._handshake.cancel()
                self._handshake = None
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.refused:
            return
        if self._handshake is not None:
            self._handshake.cancel()
        self.server.connections -= 1
        super().connection_lost(exc)
        self.hostd_handler.forget_if_done()


def _goaway(transport: Any, reason: bytes) -> None:
    goaway = H2Connection(config=H2Configuration(client_side=False))
    goaway.initiate_connection()
    goaway.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, reason)
    transport.write(goaway.data_to_send())
    transport.close()


class HostdServer(grpclib_server.Server):
    """``grpclib.server.Server`` with ``_Handler`` and ``_Protocol``. It overrides the private
    ``_protocol_factory`` (grpclib 0.4.x), the one place grpclib builds both."""

    def __init__(self, handlers: Any, *, max_connections: int, max_request_bytes: int) -> None:
        super().__init__(handlers, config=window_config(max_request_bytes))
        self.max_connections = max_connections
        self.connections = 0
        self.refused = RateLimitedLog(log)

    def _protocol_factory(self) -> H2Protocol:
        self.__gc_step__()
        handler = _Handler(self)
        self._handlers.add(handler)
        return _Protocol(self, handler, self._config, self._h2_config)
