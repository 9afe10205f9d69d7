"""hostd.tasks: the bounded reply tasks of WebSocket and ZeroMQ, and the in-flight count gRPC and the
data plane drain with."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from structlog.testing import capture_logs

from hostd.tasks import BoundedTasks, InFlight
from hostd.transports import Shutdown

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Work:
    """Tasks that record how many run at once and finish when told."""

    def __init__(self) -> None:
        self.running = self.most = 0
        self.done: list[int] = []
        self.release = asyncio.Event()

    async def item(self, number: int, seconds: float | None = None) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if seconds is None:
                await self.release.wait()
            else:
                await asyncio.sleep(seconds)
            self.done.append(number)
        finally:
            self.running -= 1


async def test_spawn_waits_for_a_free_slot_so_at_most_limit_run_at_once() -> None:
    work = Work()
    with anyio.fail_after(5):
        async with BoundedTasks(3) as tasks:
            for number in range(3):
                await tasks.spawn(work.item(number))
            with anyio.move_on_after(0.1) as blocked:
                await tasks.spawn(work.item(3))  # no slot: this waits
            assert blocked.cancelled_caught and work.running == 3
            work.release.set()
            for number in range(3, 10):
                await tasks.spawn(work.item(number, 0.001))
    assert work.most == 3
    assert sorted(work.done) == list(range(10)) and work.running == 0


async def test_leaving_waits_for_every_task_left() -> None:
    work = Work()
    with anyio.fail_after(5):
        async with BoundedTasks(100) as tasks:
            for number in range(20):
                await tasks.spawn(work.item(number, 0.05))
            assert work.done == []
    assert sorted(work.done) == list(range(20))


async def test_past_the_drain_deadline_the_tasks_left_are_cancelled() -> None:
    work, drain = Work(), Shutdown()
    with anyio.fail_after(5):
        async with BoundedTasks(10, drain) as tasks:
            # 0 s: item 1 ends on the loop's next turns, ahead of the deadline's timer however late they run
            await tasks.spawn(work.item(1, 0))
            await tasks.spawn(work.item(2))  # never released: only the deadline (or fail_after) ends it
            drain.begin(0.2)
            started = anyio.current_time()
    assert anyio.current_time() - started >= 0.15  # not cancelled before the deadline
    assert work.done == [1] and work.running == 0


async def test_leaving_by_an_exception_cancels_the_tasks_at_once() -> None:
    work = Work()
    with anyio.fail_after(5), pytest.raises(RuntimeError, match="reader failed"):
        async with BoundedTasks(10) as tasks:
            await tasks.spawn(work.item(1))
            await asyncio.sleep(0)
            raise RuntimeError("reader failed")
    await asyncio.sleep(0)
    assert work.running == 0 and work.done == []


async def test_a_task_that_raises_is_logged_and_the_others_carry_on() -> None:
    work = Work()

    async def broken() -> None:
        raise ValueError("a bug in a reply")

    with capture_logs() as logs, anyio.fail_after(5):
        async with BoundedTasks(1) as tasks:
            await tasks.spawn(broken())
            await tasks.spawn(work.item(1, 0.01))  # the failed task gave its slot back
    assert work.done == [1]
    [failed] = [line for line in logs if line["event"] == "task failed"]
    assert isinstance(failed["exc_info"], ValueError)


async def test_in_flight_is_idle_at_once_when_nothing_is_tracked() -> None:
    in_flight = InFlight()
    with anyio.fail_after(1):
        await in_flight.wait_idle()
    assert in_flight.count == 0


async def test_wait_idle_returns_when_the_last_tracked_work_ends() -> None:
    in_flight = InFlight()
    finished: list[str] = []
    release = {"first": anyio.Event(), "last": anyio.Event()}
    idle = anyio.Event()

    async def tracked(name: str) -> None:
        with in_flight.track():
            await release[name].wait()
            finished.append(name)

    async def waiter() -> None:
        await in_flight.wait_idle()
        idle.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(tracked, "last")
            tg.start_soon(tracked, "first")
            await anyio.wait_all_tasks_blocked()
            assert in_flight.count == 2
            tg.start_soon(waiter)
            release["first"].set()
            await anyio.wait_all_tasks_blocked()
            assert not idle.is_set(), "wait_idle returned while work was still tracked"
            assert finished == ["first"] and in_flight.count == 1
            release["last"].set()
            await idle.wait()
            assert finished == ["first", "last"] and in_flight.count == 0


async def test_wait_idle_works_again_after_the_count_rises_from_zero() -> None:
    in_flight = InFlight()
    for _ in range(3):  # busy, idle, busy again: each wait sees the current work
        in_flight.enter()
        waiters = [asyncio.create_task(in_flight.wait_idle()) for _ in range(2)]
        await anyio.wait_all_tasks_blocked()
        assert not any(waiter.done() for waiter in waiters)
        in_flight.leave()
        with anyio.fail_after(1):
            await asyncio.gather(*waiters)


async def test_an_exception_in_tracked_work_still_counts_it_out() -> None:
    in_flight = InFlight()
    with pytest.raises(ValueError), in_flight.track():
        raise ValueError("failed")
    assert in_flight.count == 0
