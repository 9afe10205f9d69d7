"""A transport that sends what one turn of the event loop wrote as one write.

grpclib writes each frame group as it makes it: a unary reply is three writes (headers, the message,
the trailers), and under uvloop each write is a send() system call. With many streams on a connection
(a batch of replies finishes in the same turn) that is three calls per reply. Corked gathers the
turn's writes and sends them together at the end of the turn, in order: one call per connection per
turn, which a profile showed as the largest single cost of a gRPC reply.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Corked:
    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()  # what was written before close() still goes, as with a plain transport
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, abort, ...
        return getattr(self._transport, name)
