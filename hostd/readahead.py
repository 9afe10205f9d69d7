"""Read-ahead: what a connection received in one burst is answered as one group.

A pipelined client (WebSocket, ZeroMQ DEALER) sends requests back to back, and one read from the
network often holds dozens of them. Answered one by one, each costs a task, a wait in the batcher, its
own timeout and metrics; answered as a group they cost one validation pass, one call into the data
plane and one model call, which is what lets one connection carry tens of thousands a second.

The reader ``put``s each message as it receives it. A receive of a message already buffered returns
without giving up the event loop, so the reader takes the whole burst before anything else runs;
``groups`` is woken by the first ``put`` and runs only once the reader waits for the network, so it
yields the whole burst at once. ``put`` waits while ``limit`` messages are unanswered (``answered``):
a client that does not read its replies cannot make the daemon buffer without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ReadAhead(Generic[T]):
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._waiting: list[T] = []
        self._unanswered = 0  # put and not yet answered, grouped or not
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._closed = False

    async def put(self, message: T) -> None:
        while self._unanswered >= self._limit:
            self._room.clear()
            await self._room.wait()
        self._unanswered += 1
        self._waiting.append(message)
        self._arrived.set()

    def close(self) -> None:
        """The reader is done: ``groups`` yields what is left, then ends."""
        self._closed = True
        self._arrived.set()

    def answered(self, count: int) -> None:
        self._unanswered -= count
        self._room.set()

    async def groups(self) -> AsyncIterator[list[T]]:
        while self._waiting or not self._closed:
            if not self._waiting:
                await self._arrived.wait()
                self._arrived.clear()
                continue
            group, self._waiting = self._waiting, []
            yield group
