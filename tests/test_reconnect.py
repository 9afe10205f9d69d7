"""hostd.reconnect: the Kafka and arq transports' connection loop, with sessions that fail on cue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

from hostd import reconnect as reconnecting
from hostd.reconnect import RetrySettings, reconnect
from hostd.transports import Shutdown

pytestmark = pytest.mark.anyio
log = structlog.get_logger("tests.reconnect")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Broker:
    """Sessions against a fake broker: ``script`` says what each session does, in turn:
    "down" (fails to connect), "drop" (connects, then the connection fails), "serve" (until stop),
    "end" (connects, then returns without a stop), "hang-close" (like "serve", but never closes)."""

    script: list[str]
    stop: Shutdown = field(default_factory=Shutdown)
    starts: list[float] = field(default_factory=list)
    closed: int = 0

    def session(self) -> Session:
        return Session(self, self.script.pop(0) if self.script else "serve")

    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.starts, self.starts[1:], strict=False)]


@dataclass
class Session:
    broker: Broker
    behaviour: str

    async def run(self, stop: Shutdown, connected: Callable[[], None]) -> None:
        self.broker.starts.append(anyio.current_time())
        if self.behaviour == "down":
            raise ConnectionRefusedError("connection refused")
        connected()
        if self.behaviour == "drop":
            raise ConnectionResetError("connection reset")
        if self.behaviour == "end":
            return
        await stop.wait()

    async def close(self) -> None:
        if self.behaviour == "hang-close":
            await anyio.sleep_forever()
        self.broker.closed += 1


async def run(broker: Broker, until: Callable[[], bool], backoff_s: float = 0.05,
              backoff_max_s: float = 0.4) -> None:
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: reconnect(broker.session, broker.stop, RetrySettings(
                retry_backoff_s=backoff_s, retry_backoff_max_s=backoff_max_s), service="fake", log=log))
            while not until():
                await anyio.sleep(0.005)
            broker.stop.begin(1)


async def test_failures_back_off_doubling_up_to_the_maximum() -> None:
    broker = Broker(["down"] * 5)
    with capture_logs() as logs:
        await run(broker, lambda: len(broker.starts) == 6)
    # The schedule is the delays reconnect says it waits (retry_in_s); the clock can only show that
    # it waited at least that long: how much longer depends on how busy the machine is.
    warnings = [line for line in logs if line["event"] == "fake unavailable; retrying"]
    assert [line["retry_in_s"] for line in warnings] == [0.05, 0.1, 0.2, 0.4, 0.4]
    gaps = broker.gaps()
    assert all(gap >= delay for gap, delay in zip(gaps, [0.05, 0.1, 0.2, 0.4, 0.4], strict=True)), gaps
    assert warnings[0]["error"] == "ConnectionRefusedError: connection refused"
    assert broker.closed == 6, "every session is closed, the failed ones too"


async def test_the_backoff_starts_again_once_a_session_has_connected() -> None:
    # Down four times (the delay grows to 0.4 s), then connected a while and dropped: the broker was
    # reachable, so the next attempt comes after the first delay, not after the grown one (0.8 s).
    broker = Broker(["down", "down", "down", "down", "drop"])
    with capture_logs() as logs:
        await run(broker, lambda: len(broker.starts) == 6, backoff_max_s=5)
    warnings = [line for line in logs if line["event"] == "fake unavailable; retrying"]
    assert [line["retry_in_s"] for line in warnings] == [0.05, 0.1, 0.2, 0.4, 0.05]
    assert broker.gaps()[-1] >= 0.05, broker.gaps()
    assert [line["event"] for line in logs].count("fake connected") == 2


async def test_a_session_that_ends_without_a_stop_is_retried_after_the_delay_not_at_once() -> None:
    broker = Broker(["end", "end"])
    await run(broker, lambda: len(broker.starts) == 3)
    assert all(gap >= 0.05 for gap in broker.gaps()), broker.gaps()


async def test_a_stop_during_the_backoff_returns_at_once() -> None:
    broker = Broker(["down"])
    # The backoff is an hour: returning at all, within the hang guard, means the stop cut it short.
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: reconnect(broker.session, broker.stop, RetrySettings(retry_backoff_s=3600),
                                            service="fake", log=log))
            while not broker.starts:
                await anyio.sleep(0.005)
            broker.stop.begin(1)
    assert len(broker.starts) == 1


async def test_a_close_that_hangs_does_not_hold_up_the_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconnecting, "CLOSE_TIMEOUT_S", 0.2)
    broker = Broker(["hang-close"])
    # The close never returns: that run() returns at all, within its hang guard, is the close timeout.
    await run(broker, lambda: bool(broker.starts))
    assert broker.closed == 0 and len(broker.starts) == 1
