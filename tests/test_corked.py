"""Corked (gRPC and WebSocket connections): the writes of one event-loop turn leave as one write, in
order; close() sends what is pending."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hostd.corked import Corked

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return f"info:{name}"

    def get_write_buffer_size(self) -> int:
        return 0

    def write_eof(self) -> None:
        self.writes.append(b"<eof>")


async def test_one_turns_writes_leave_as_one_write_in_order() -> None:
    transport = Recording()
    corked = Corked(transport)  # type: ignore[arg-type]
    for frame in (b"headers", b"", b"message", b"trailers"):
        corked.write(frame)
    assert transport.writes == []  # nothing until the turn ends
    await asyncio.sleep(0)
    assert transport.writes == [b"headersmessagetrailers"]
    corked.write(b"next")
    await asyncio.sleep(0)
    assert transport.writes == [b"headersmessagetrailers", b"next"]


async def test_close_sends_what_is_pending_and_a_closing_transport_gets_nothing() -> None:
    transport = Recording()
    corked = Corked(transport)  # type: ignore[arg-type]
    corked.write(b"goaway")
    corked.close()
    assert (transport.writes, transport.closed) == ([b"goaway"], True)
    corked.write(b"late")
    await asyncio.sleep(0)
    assert transport.writes == [b"goaway"]
    assert corked.get_extra_info("peername") == "info:peername"


async def test_pending_bytes_count_as_buffered_and_go_before_the_eof() -> None:
    transport = Recording()
    corked = Corked(transport)  # type: ignore[arg-type]
    corked.write(b"close frame")
    assert corked.get_write_buffer_size() == len(b"close frame")
    corked.write_eof()
    assert transport.writes == [b"close frame", b"<eof>"]
