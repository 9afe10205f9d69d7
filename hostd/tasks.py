"""Work in flight on the per-request path: a bounded set of owned tasks, and a count to drain.

Both use asyncio's primitives directly, not anyio's: they run once per message or request, where
anyio's task groups, semaphores and events look up the running backend on every call (~15% of the
event loop under load, measured with py-spy).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

if TYPE_CHECKING:
    from hostd.transports import Shutdown

log = structlog.get_logger("hostd.tasks")
T = TypeVar("T")


class BoundedTasks:
    """At most ``limit`` tasks at once; ``spawn`` waits for a free slot (so a reader stops reading).

    ``async with`` owns them: on leaving normally it waits for the tasks left (until ``drain``'s
    deadline, if given), and on leaving by an exception, or past that deadline, it cancels them.
    """

    def __init__(self, limit: int, drain: Shutdown | None = None) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()
        self._drain = drain

    async def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await self._slots.acquire()
        except BaseException:  # cancelled while waiting: ``work`` never starts
            work.close()
            raise
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task failed", exc_info=exc)  # retrieved here: nothing fails unseen

    async def __aenter__(self) -> BoundedTasks:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if kind is None and self._tasks:
                # asyncio.wait, not a cancel scope around gather: it returns at the timeout instead of
                # being cancelled there, so no cancellation escapes into the caller (one did, under load)
                remaining = self._drain.remaining() if self._drain is not None else None
                await asyncio.wait(set(self._tasks), timeout=remaining)  # failures: logged in _done
        finally:
            late = set(self._tasks)
            for task in late:
                task.cancel()
        if late:
            await asyncio.wait(late)  # left normally: their cleanup runs before we return


#: A request at least this big (bytes on the wire) is parsed and decoded in a worker thread: ~0.5 ms
#: of work or more, which on the event loop would hold up every other client.
OFF_LOOP_BYTES = 64 << 10


async def off_loop_if(big: bool, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)``, in a worker thread if ``big`` (CPU work for one big request: parsing, decoding,
    validating), else here, where a thread's hand-off would cost more than the work."""
    return await asyncio.to_thread(work, *args) if big else work(*args)


class InFlight:
    """Counts work in progress, so shutdown can wait until there is none."""

    __slots__ = ("_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None  # made only when someone waits

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if not self.count and self._idle is not None:
            self._idle.set()

    @contextmanager
    def track(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    async def wait_idle(self) -> None:
        """Return once nothing is in flight (at once if nothing is)."""
        while self.count:
            if self._idle is None or self._idle.is_set():
                self._idle = asyncio.Event()
            await self._idle.wait()
