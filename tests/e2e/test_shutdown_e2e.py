"""Stopping a daemon that serves Kafka: SIGTERM when idle exits at once (it took ~4 s while the
consumer waited out its group join), with code 0, and every message is still answered exactly once."""

from __future__ import annotations

import signal
import time
from collections import Counter

import anyio
import pytest

from tests.conftest import HostdProcess
from tests.e2e.brokers import Reader, StartTansu, Topics, produce, request
from tests.e2e.test_kafka_e2e import serve
from tests.support.e2e import Start, echo

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

STOPS_WITHIN_S = 2.0  # generous: it stops in ~0.1 s; waiting for the group join took 4-5 s


async def stopped_in(server: HostdProcess) -> tuple[float, int]:
    """SIGTERM; (seconds until the process exited, its exit code)."""
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = await anyio.to_thread.run_sync(lambda: server.proc.wait(30))
    return time.monotonic() - started, code


@pytest.mark.timeout(180)
async def test_an_idle_daemon_with_kafka_stops_at_once_and_answers_every_message_once(
        start_tansu: StartTansu, start_hostd: Start) -> None:
    broker = start_tansu()
    topics = Topics.named("shutdown")
    await topics.create(broker.bootstrap)

    # Stopped while its consumer is still joining the group (Tansu holds the join ~5 s).
    joining = await serve(start_hostd, broker, topics, [echo()])
    await produce(broker.bootstrap, topics.input, [(b"k", request("while-joining", "echo", {"x": 1}))])
    seconds, code = await stopped_in(joining)
    assert (seconds < STOPS_WITHIN_S, code) == (True, 0), (seconds, joining.output())

    # Stopped when idle, once it has answered, with a message sent just before the signal.
    member = await serve(start_hostd, broker, topics, [echo()])
    async with Reader(broker.bootstrap, topics.output, topics.dead_letter) as reader:
        await reader.until(lambda: {"while-joining"} <= reader.answered, 60, "the first daemon's message answered")
        await produce(broker.bootstrap, topics.input, [(b"k", request("just-before", "echo", {"x": 2}))])
        seconds, code = await stopped_in(member)
        assert (seconds < STOPS_WITHIN_S, code) == (True, 0), (seconds, member.output())

        # What the stopped daemon did not answer (and commit), the next one does; nothing twice.
        await serve(start_hostd, broker, topics, [echo()])
        await reader.until(lambda: {"just-before"} <= reader.answered, 60, "the message sent before the stop")
        await reader.past(topics.input)
    assert reader.on(topics.dead_letter) == []
    assert reader.ids() == Counter(["while-joining", "just-before"]), "each answered exactly once"
