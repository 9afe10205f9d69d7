"""Adaptive batching: concurrent requests share predict_batch calls; each gets its own answer.

The toy model is GatedEcho: a request whose ``gate`` names a file stays in the model until the file
exists, so a test holds one batch in the model while it queues others behind it, with no sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from hostd.configfile import parse_settings
from hostd.dataplane import DataPlane
from hostd.errors import ModelError, Timeout
from hostd.registry import Registry

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def plane(max_batch_size: int = 64, workers: int = 1, timeout_ms: int = 5000, max_delay_ms: float = 5) -> DataPlane:
    settings = parse_settings(
        f"models: [{{class_path: 'tests.support.toy:GatedEcho', timeout_ms: {timeout_ms},"
        f" workers: {{count: {workers}}},"
        f" batching: {{max_batch_size: {max_batch_size}, max_delay_ms: {max_delay_ms}}}}}]",
        "test.yaml")
    dataplane = DataPlane(Registry.from_settings(settings))
    dataplane.set_ready()
    return dataplane


def model(dataplane: DataPlane) -> Any:
    return dataplane.model("echo").model


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):  # a hang guard
        while not condition():
            await anyio.sleep(0.001)


async def concurrently(dataplane: DataPlane, payloads: list[dict[str, Any]], hold_first: Path | None = None
                       ) -> list[Any]:
    """Send every payload at once. With ``hold_first`` (a gate): the first, held in the model until
    the rest have all been queued behind it; then the gate opens."""
    results: list[Any] = [None] * len(payloads)

    async def one(index: int, payload: dict[str, Any]) -> None:
        try:
            results[index] = (await dataplane.predict("echo", payload)).output
        except Exception as exc:
            results[index] = exc

    async with anyio.create_task_group() as tg:
        rest = list(enumerate(payloads))
        if hold_first is not None:
            tg.start_soon(one, 0, {**payloads[0], "gate": str(hold_first)})
            await wait_until(lambda: model(dataplane).running == 1)
            rest = rest[1:]
        for index, payload in rest:
            tg.start_soon(one, index, payload)
        if hold_first is not None:
            await wait_until(lambda: dataplane.model("echo").pending == len(payloads))
            hold_first.touch()
    return results


async def test_a_lone_request_runs_at_once_in_a_batch_of_one() -> None:
    # Waiting max_delay_ms for company would take 10 s: a lone request must not wait at all.
    dataplane = plane(max_delay_ms=10_000)
    with anyio.fail_after(5):
        assert (await dataplane.predict("echo", {"x": 2})).output == {"y": 4.0, "text": ""}
    assert model(dataplane).batches == [1]


async def test_requests_queued_behind_a_busy_model_share_one_call_and_keep_their_answers(
        gates: Callable[[], Path]) -> None:
    dataplane = plane()
    payloads = [{"x": 0}] + [{"x": i, "text": f"t{i}"} for i in range(1, 21)]
    results = await concurrently(dataplane, payloads, hold_first=gates())
    assert results == [{"y": 0.0, "text": ""}] + [{"y": 2.0 * i, "text": f"T{i}"} for i in range(1, 21)]
    # The first request ran alone; the 20 that queued behind it went to the model together.
    assert model(dataplane).batches == [1, 20]


async def test_batches_never_exceed_max_batch_size(gates: Callable[[], Path]) -> None:
    dataplane = plane(max_batch_size=8)
    await concurrently(dataplane, [{"x": i} for i in range(21)], hold_first=gates())
    assert max(model(dataplane).batches) <= 8
    assert sum(model(dataplane).batches) == 21


async def test_max_batch_size_1_turns_batching_off() -> None:
    dataplane = plane(max_batch_size=1)
    assert dataplane.model("echo").batcher is None
    await concurrently(dataplane, [{"x": i} for i in range(5)])
    assert model(dataplane).batches == [1, 1, 1, 1, 1]


async def test_a_request_that_makes_the_model_raise_fails_alone(gates: Callable[[], Path]) -> None:
    dataplane = plane()
    payloads = [{"x": 0}, {"x": 1}, {"x": 2, "fail": True}, {"x": 3}]
    results = await concurrently(dataplane, payloads, hold_first=gates())
    assert results[0] == {"y": 0.0, "text": ""}
    assert results[1] == {"y": 2.0, "text": ""} and results[3] == {"y": 6.0, "text": ""}
    assert isinstance(results[2], ModelError) and "asked to fail" in results[2].message
    assert model(dataplane).batches[:2] == [1, 3], "the three queued requests went to the model together"


async def test_a_batch_that_takes_too_long_times_out_every_request_in_it(gates: Callable[[], Path]) -> None:
    # The first is let go as soon as the others are queued (well within timeout_ms); the second
    # waits for a gate that stays shut, so the batch it shares with the third outlasts timeout_ms.
    dataplane = plane(timeout_ms=1000)
    results = await concurrently(dataplane, [{"x": 0}, {"x": 1, "gate": str(gates())}, {"x": 2}],
                                 hold_first=gates())
    assert results[0] == {"y": 0.0, "text": ""}
    assert isinstance(results[1], Timeout) and isinstance(results[2], Timeout)
    assert model(dataplane).batches == [1, 2]


async def test_a_request_cancelled_while_queued_leaves_the_queue(gates: Callable[[], Path]) -> None:
    dataplane = plane()
    gate = gates()
    async with anyio.create_task_group() as tg:
        tg.start_soon(dataplane.predict, "echo", {"x": 0, "gate": str(gate)})
        await wait_until(lambda: model(dataplane).running == 1)
        with anyio.CancelScope() as given_up:
            tg.start_soon(cancel_once_queued, given_up, dataplane)
            await dataplane.predict("echo", {"x": 1})  # queued behind the held one, then given up
        assert given_up.cancelled_caught
        gate.touch()
    assert (await dataplane.predict("echo", {"x": 3})).output["y"] == 6.0
    assert model(dataplane).batches == [1, 1]  # the cancelled request never reached the model


async def cancel_once_queued(scope: anyio.CancelScope, dataplane: DataPlane) -> None:
    """Cancel ``scope`` once its request is queued (two pending: the held one, and it)."""
    await wait_until(lambda: dataplane.model("echo").pending == 2)
    scope.cancel()


async def test_two_workers_run_two_batches_at_once(gates: Callable[[], Path]) -> None:
    dataplane = plane(workers=2)
    gate = gates()
    async with anyio.create_task_group() as tg:
        for x in (0, 1):
            tg.start_soon(dataplane.predict, "echo", {"x": x, "gate": str(gate)})
        # Both in the model at the same moment: one worker thread each.
        await wait_until(lambda: model(dataplane).running == 2)
        gate.touch()
    assert model(dataplane).batches == [1, 1]
    assert model(dataplane).most_running == 2


async def test_a_shared_batch_leader_that_gives_up_leaves_at_once_and_the_others_get_answers(
        gates: Callable[[], Path]) -> None:
    dataplane = plane()
    busy, shared = gates(), gates()
    answers: list[float] = []
    left = anyio.Event()

    async def follower(x: int) -> None:
        answers.append((await dataplane.predict("echo", {"x": x, "gate": str(shared)})).output["y"])

    async def leader(scope: anyio.CancelScope) -> None:
        with scope:  # leads the next batch (x=1, 2, 3), then gives up while it is in the model
            await dataplane.predict("echo", {"x": 1, "gate": str(shared)})
        left.set()

    giving_up = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(dataplane.predict, "echo", {"x": 0, "gate": str(busy)})  # keeps the worker busy
        await wait_until(lambda: model(dataplane).running == 1)
        tg.start_soon(leader, giving_up)
        await wait_until(lambda: dataplane.model("echo").pending == 2)  # the leader is queued first
        for x in (2, 3):
            tg.start_soon(follower, x)
        await wait_until(lambda: dataplane.model("echo").pending == 4)
        busy.touch()
        await wait_until(lambda: model(dataplane).batches == [1, 3] and model(dataplane).running == 1)
        giving_up.cancel()
        with anyio.fail_after(10):  # a hang guard
            await left.wait()
        # Not held until the shared batch ends: it is still in the model.
        assert model(dataplane).running == 1 and answers == []
        shared.touch()
    assert sorted(answers) == [4.0, 6.0]
    assert model(dataplane).batches == [1, 3]
