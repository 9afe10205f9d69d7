"""Adaptive batching: concurrent requests share predict_batch calls; each gets its own answer."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from hostd.dataplane import DataPlane
from hostd.errors import ModelError, Timeout
from hostd.registry import Registry
from hostd.settings import parse_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def plane(max_batch_size: int = 64, workers: int = 1, timeout_ms: int = 5000) -> DataPlane:
    settings = parse_settings(
        f"models: [{{class_path: 'tests.support.toy:EchoModel', timeout_ms: {timeout_ms},"
        f" workers: {{count: {workers}}}, batching: {{max_batch_size: {max_batch_size}, max_delay_ms: 5}}}}]",
        "test.yaml")
    dataplane = DataPlane(Registry.from_settings(settings))
    dataplane.set_ready()
    return dataplane


def model(dataplane: DataPlane) -> Any:
    return dataplane.model("echo").model


async def concurrently(dataplane: DataPlane, payloads: list[dict[str, Any]], first_alone: bool = False) -> list[Any]:
    """Send every payload at once (or the first, then the rest once it is running)."""
    results: list[Any] = [None] * len(payloads)

    async def one(index: int, payload: dict[str, Any]) -> None:
        try:
            results[index] = (await dataplane.predict("echo", payload)).output
        except Exception as exc:
            results[index] = exc

    async with anyio.create_task_group() as tg:
        for index, payload in enumerate(payloads):
            tg.start_soon(one, index, payload)
            if first_alone and index == 0:
                await anyio.sleep(0.03)
    return results


async def test_a_lone_request_runs_at_once_in_a_batch_of_one() -> None:
    dataplane = plane()
    started = time.perf_counter()
    assert (await dataplane.predict("echo", {"x": 2})).output == {"y": 4.0, "text": ""}
    assert time.perf_counter() - started < 0.5
    assert model(dataplane).batches == [1]


async def test_requests_queued_behind_a_busy_model_share_one_call_and_keep_their_answers() -> None:
    dataplane = plane()
    payloads = [{"x": 0, "delay_ms": 100}] + [{"x": i, "text": f"t{i}"} for i in range(1, 21)]
    results = await concurrently(dataplane, payloads, first_alone=True)
    assert results == [{"y": 0.0, "text": ""}] + [{"y": 2.0 * i, "text": f"T{i}"} for i in range(1, 21)]
    # The first request ran alone; the 20 that queued behind it went to the model together.
    assert model(dataplane).batches == [1, 20]


async def test_batches_never_exceed_max_batch_size() -> None:
    dataplane = plane(max_batch_size=8)
    await concurrently(dataplane, [{"x": 0, "delay_ms": 100}] + [{"x": i} for i in range(1, 21)], first_alone=True)
    assert max(model(dataplane).batches) <= 8
    assert sum(model(dataplane).batches) == 21


async def test_max_batch_size_1_turns_batching_off() -> None:
    dataplane = plane(max_batch_size=1)
    assert dataplane.model("echo").batcher is None
    await concurrently(dataplane, [{"x": i} for i in range(5)])
    assert model(dataplane).batches == [1, 1, 1, 1, 1]


async def test_a_request_that_makes_the_model_raise_fails_alone() -> None:
    dataplane = plane()
    payloads = [{"x": 0, "delay_ms": 100}, {"x": 1}, {"x": 2, "fail": True}, {"x": 3}]
    results = await concurrently(dataplane, payloads, first_alone=True)
    assert results[0] == {"y": 0.0, "text": ""}
    assert results[1] == {"y": 2.0, "text": ""} and results[3] == {"y": 6.0, "text": ""}
    assert isinstance(results[2], ModelError) and "asked to fail" in results[2].message


async def test_a_batch_that_takes_too_long_times_out_every_request_in_it() -> None:
    dataplane = plane(timeout_ms=300)
    results = await concurrently(dataplane, [{"x": 0, "delay_ms": 100}, {"x": 1, "delay_ms": 1000}, {"x": 2}],
                                 first_alone=True)
    assert results[0] == {"y": 0.0, "text": ""}
    assert isinstance(results[1], Timeout) and isinstance(results[2], Timeout)


async def test_a_request_cancelled_while_queued_leaves_the_queue() -> None:
    dataplane = plane()
    async with anyio.create_task_group() as tg:
        tg.start_soon(dataplane.predict, "echo", {"x": 0, "delay_ms": 200})
        await anyio.sleep(0.05)
        with anyio.move_on_after(0.05):
            await dataplane.predict("echo", {"x": 1})  # queued behind the slow one, then given up
    assert (await dataplane.predict("echo", {"x": 3})).output["y"] == 6.0
    assert sum(model(dataplane).batches) == 2  # the cancelled request never reached the model


async def test_two_workers_run_two_batches_at_once() -> None:
    dataplane = plane(workers=2)
    await concurrently(dataplane, [{"x": 0, "delay_ms": 300}, {"x": 1, "delay_ms": 300}], first_alone=True)
    assert model(dataplane).batches == [1, 1]
    assert model(dataplane).most_running == 2  # both worker threads busy at the same moment


async def test_a_shared_batch_leader_that_gives_up_leaves_at_once_and_the_others_get_answers() -> None:
    dataplane = plane()
    answers: list[float] = []
    gave_up_after: list[float] = []

    async def follower(x: int) -> None:
        answers.append((await dataplane.predict("echo", {"x": x, "delay_ms": 150})).output["y"])

    async def impatient_leader() -> None:
        started = time.perf_counter()
        with anyio.move_on_after(0.25):  # leads the next batch (x=1, 2, 3), then gives up mid-batch
            await dataplane.predict("echo", {"x": 1, "delay_ms": 150})
        gave_up_after.append(time.perf_counter() - started)

    async with anyio.create_task_group() as tg:
        tg.start_soon(dataplane.predict, "echo", {"x": 0, "delay_ms": 200})  # keeps the worker busy
        await anyio.sleep(0.05)
        tg.start_soon(impatient_leader)
        await anyio.sleep(0.02)
        for x in (2, 3):
            tg.start_soon(follower, x)
    assert gave_up_after[0] < 0.35  # not held until the shared batch (~450 ms of model time) ends
    assert sorted(answers) == [4.0, 6.0]
    assert model(dataplane).batches == [1, 3]
