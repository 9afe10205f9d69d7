"""Adaptive micro-batching: concurrent requests for one model share one ``predict_batch`` call.

No timer and no background task: the first waiting request leads. It waits for a free worker
(``workers.count``), and while the model is busy other requests queue behind it; when it gets a
worker it takes up to ``max_batch_size`` rows (waiting at most ``max_delay_ms`` for more only if
other batches are running; spread over the idle workers), hands the lead to the next queued request
and runs the batch through the execution kernel (``hostd.kernel``), which gives every request its
own outcome. So an idle model answers a lone request at once, and a busy one runs ever larger
batches. A request is a list of units (see ``hostd.kernel``); each unit fails or succeeds alone.

This is the per-request hot path, so it uses asyncio's primitives directly (hostd's daemon runs on
asyncio): anyio's equivalents look up the running backend on every call, which cost ~10% of the
event loop under load.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hostd import kernel, tracing


@dataclass(eq=False, slots=True)
class _Request:
    units: Sequence[list[Any]]
    rows: int
    deadline: float | None  # on the loop's clock
    spans: tuple[Any, ...]  # the request's span(s), when it is traced (hostd.tracing)
    queued_ns: int  # when it came, if traced
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # done, or promoted to lead
    taken: bool = False
    done: bool = False
    outcomes: list[kernel.Outcome] = field(default_factory=list)


class Batcher:
    def __init__(self, run: kernel.Run, *, max_batch_size: int, max_delay_s: float, workers: int,
                 name: str, version: str = "") -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.name = name
        self.version = version  # for the spans (hostd.tracing)
        self._workers = workers
        self._slots = asyncio.Semaphore(workers)
        self._running: set[asyncio.Task[None]] = set()  # batches being executed
        self._queue: deque[_Request] = deque()
        self._queued = 0  # rows in the queue (kept, not summed: this runs per request)
        self._leader: _Request | None = None
        self._filled = asyncio.Event()
        self.observe_rows: Callable[[float], None] | None = None  # the data plane's batch-size histogram


    async def __call__(self, units: Sequence[list[Any]], deadline: float | None = None) -> list[kernel.Outcome]:
        """One outcome per unit. A batch runs until the latest deadline of the requests in it; each
        caller bounds its own wait."""
        spans = tracing.parents()
        request = _Request(units, sum(len(unit) for unit in units), deadline, spans, tracing.now_ns() if spans else 0)
        self._queue.append(request)
        self._queued += request.rows
        if self._queued >= self.max_batch_size:
            self._filled.set()
        try:
            if self._leader is None:
                self._leader = request
            while not request.done:
                if self._leader is request:
                    await self._lead(request)
                else:
                    await request.wake.wait()
                    request.wake.clear()
        finally:
            if not request.taken:  # cancelled while queued: leave, and pass the lead on
                self._queue.remove(request)
                self._queued -= request.rows
                if self._leader is request:
                    self._promote()
        return request.outcomes

    async def _lead(self, request: _Request) -> None:
        await self._slots.acquire()
        try:
            if self._running and self._queued < self.max_batch_size:  # other batches are running
                self._filled.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.max_delay_s):
                        await self._filled.wait()
            batch = self._take()
            self._promote()
        except BaseException:
            self._slots.release()
            raise
        task = asyncio.ensure_future(self._execute(batch))
        self._running.add(task)
        task.add_done_callback(self._finished)
        # A batch shared with other requests runs on even if its leader is cancelled (the leader
        # leaves at once; the others get their answers). A lone request's batch is cancelled with it.
        await (asyncio.shield(task) if len(batch) > 1 else task)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slots.release()

    def _take(self) -> list[_Request]:
        # Spread the queue over the idle workers (this one included): one big batch would run
        # serially in one worker while the others sit idle.
        idle = self._workers - len(self._running)
        limit = min(self.max_batch_size, -(-self._queued // idle))
        batch: list[_Request] = []
        rows = 0
        while self._queue and (not batch or rows + self._queue[0].rows <= limit):
            item = self._queue.popleft()
            self._queued -= item.rows
            item.taken = True
            batch.append(item)
            rows += item.rows
        return batch

    def _promote(self) -> None:
        self._leader = self._queue[0] if self._queue else None
        if self._leader is not None:
            self._leader.wake.set()

    async def _execute(self, batch: list[_Request]) -> None:
        deadlines = [item.deadline for item in batch]
        deadline = None if None in deadlines else max(deadlines)  # type: ignore[type-var]
        rows = sum(item.rows for item in batch)
        if self.observe_rows is not None:
            self.observe_rows(rows)
        traced = [item for item in batch if any(item.spans)]
        began = tracing.now_ns() if traced else 0
        outcomes = await kernel.execute(self._run, [unit for item in batch for unit in item.units],
                                        model=self.name, deadline=deadline)
        if traced:  # each request's trace shows its wait and the call it shared, with the batch's size
            ended = tracing.now_ns()
            requests = sum(len(item.units) for item in batch)  # a unit is a request (a message of a group)
            for item in traced:
                tracing.record("hostd.batch_wait", item.spans, item.queued_ns, began)
                tracing.record("hostd.model", item.spans, began, ended,
                               **{"hostd.model": self.name, "hostd.version": self.version, "hostd.batch.rows": rows,
                                  "hostd.batch.requests": requests})
        offset = 0
        for item in batch:
            item.outcomes = outcomes[offset:offset + len(item.units)]
            offset += len(item.units)
            item.done = True
            item.wake.set()
