"""A transport that sends what one turn of the event loop wrote as one write.

Protocol libraries write as they go: grpclib writes a unary reply as three writes (headers, the
message, the trailers), websockets writes each message, and under uvloop every write is a send()
system call. When a batch of answers finishes in the same turn that is a call per frame: the largest
single cost of a gRPC reply and more than half the event loop for pipelined WebSocket replies in
py-spy profiles. Corked gathers the turn's writes and sends them together at the end of the turn, in
order: one call per connection per turn.
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

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:  # what a sender checks before it writes more
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, abort, ...
        return getattr(self._transport, name)
