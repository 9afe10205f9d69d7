"""Adaptive micro-batching: concurrent requests for one model share one ``predict_batch`` call.

No timer and no background task: the first waiting request leads. It waits for a free worker
(``workers.count``), and while the model is busy other requests queue behind it; when it gets a
worker it takes up to ``max_batch_size`` rows (waiting at most ``max_delay_ms`` for more only if
other batches are running; spread over the idle workers), hands the lead to the next queued request
and runs the batch. So an idle model answers a lone request at once, and a busy one runs ever larger
batches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from hostd.errors import Timeout

Run = Callable[[list[Any]], Awaitable[list[Any]]]


@dataclass(eq=False)
class _Request:
    inputs: list[Any]
    wake: anyio.Event = field(default_factory=anyio.Event)  # done, or promoted to lead
    taken: bool = False
    done: bool = False
    outputs: list[Any] = field(default_factory=list)
    error: BaseException | None = None


class Batcher:
    def __init__(self, run: Run, *, max_batch_size: int, max_delay_s: float, workers: int, timeout_s: float,
                 name: str) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.timeout_s = timeout_s
        self.name = name
        self._slots = anyio.Semaphore(workers)
        self._workers = workers
        self._queue: deque[_Request] = deque()
        self._leader: _Request | None = None
        self._filled = anyio.Event()
        self.batch_sizes: list[int] = []  # recent batch sizes, for tests and metrics (bounded)

    async def __call__(self, inputs: list[Any]) -> list[Any]:
        request = _Request(inputs)
        self._queue.append(request)
        if self._queued_rows() >= self.max_batch_size:
            self._filled.set()
        try:
            if self._leader is None:
                self._leader = request
            while not request.done:
                if self._leader is request:
                    await self._lead(request)
                else:
                    await request.wake.wait()
                    request.wake = anyio.Event()
        finally:
            if not request.taken:  # cancelled while queued: leave, and pass the lead on
                self._queue.remove(request)
                if self._leader is request:
                    self._promote()
        if request.error is not None:
            raise request.error
        return request.outputs

    async def _lead(self, request: _Request) -> None:
        async with self._slots:
            busy = self._workers - self._slots.value > 1  # other batches are running
            if busy and self._queued_rows() < self.max_batch_size:
                self._filled = anyio.Event()
                with anyio.move_on_after(self.max_delay_s):
                    await self._filled.wait()
            batch = self._take()
            self._promote()
            # A batch shared with other requests is finished even if the leader is cancelled (its
            # own deadline then waits for the batch, which is bounded by the model's timeout).
            with anyio.CancelScope(shield=len(batch) > 1):
                await self._execute(batch)

    def _take(self) -> list[_Request]:
        # Spread the queue over the idle workers (this one included): one big batch would run
        # serially in one worker while the others sit idle.
        idle = self._slots.value + 1
        limit = min(self.max_batch_size, -(-self._queued_rows() // idle))
        batch: list[_Request] = []
        rows = 0
        while self._queue and (not batch or rows + len(self._queue[0].inputs) <= limit):
            item = self._queue.popleft()
            item.taken = True
            batch.append(item)
            rows += len(item.inputs)
        return batch

    def _promote(self) -> None:
        self._leader = self._queue[0] if self._queue else None
        if self._leader is not None:
            self._leader.wake.set()

    def _queued_rows(self) -> int:
        return sum(len(item.inputs) for item in self._queue)

    async def _execute(self, batch: list[_Request]) -> None:
        self.batch_sizes = [*self.batch_sizes[-99:], sum(len(item.inputs) for item in batch)]
        try:
            with anyio.fail_after(self.timeout_s):
                outputs = await self._run([row for item in batch for row in item.inputs])
        except TimeoutError:
            error: BaseException = Timeout(f"model '{self.name}' did not answer within "
                                           f"{round(self.timeout_s * 1000)} ms")
            return self._finish(batch, error=error)
        except Exception as exc:
            if len(batch) == 1:
                return self._finish(batch, error=exc)
            for item in batch:  # one request's rows made the model raise: find it, spare the others
                await self._execute([item])
            return None
        if len(batch) == 1:  # the caller checks the output count
            batch[0].outputs = outputs
            return self._finish(batch)
        if len(outputs) != sum(len(item.inputs) for item in batch):
            for item in batch:  # split it up so each request gets its own verdict
                await self._execute([item])
            return None
        offset = 0
        for item in batch:
            item.outputs = outputs[offset:offset + len(item.inputs)]
            offset += len(item.inputs)
            self._finish([item])
        return None

    @staticmethod
    def _finish(batch: list[_Request], error: BaseException | None = None) -> None:
        for item in batch:
            item.error = error
            item.done = True
            item.wake.set()
