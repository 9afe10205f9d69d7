"""Process workers: the model runs in child processes; a child that dies is replaced."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import AsyncIterator

import anyio
import pytest

from hostd.dataplane import DataPlane
from hostd.errors import ModelError
from hostd.registry import Registry
from hostd.settings import parse_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def plane() -> AsyncIterator[DataPlane]:
    settings = parse_settings(
        "models: [{class_path: 'tests.support.toy_process:PidModel', timeout_ms: 20000,"
        " workers: {kind: process, count: 2}, batching: {max_batch_size: 1}}]", "test.yaml")
    registry = Registry.from_settings(settings)
    await anyio.to_thread.run_sync(registry.warm_up)
    dataplane = DataPlane(registry)
    dataplane.set_ready()
    try:
        yield dataplane
    finally:
        await anyio.to_thread.run_sync(registry.close)


async def predict_many_times(dataplane: DataPlane, count: int) -> list[dict[str, float]]:
    results: list[dict[str, float]] = []

    async def one(x: int) -> None:
        results.append((await dataplane.predict("pid", {"x": x})).output)

    async with anyio.create_task_group() as tg:
        for x in range(count):
            tg.start_soon(one, x)
    return results


@pytest.mark.timeout(120)
async def test_predictions_run_in_child_processes_not_in_the_daemon(plane: DataPlane) -> None:
    results = await predict_many_times(plane, 40)
    assert sorted(r["y"] for r in results) == [2.0 * x for x in range(40)]
    pids = {r["pid"] for r in results}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2


@pytest.mark.timeout(120)
async def test_a_child_that_dies_fails_its_call_and_is_replaced(plane: DataPlane) -> None:
    with pytest.raises(ModelError, match="worker process died"):
        await plane.predict("pid", {"x": 1, "crash": True})
    # The next calls are served by fresh children.
    results = await predict_many_times(plane, 4)
    assert sorted(r["y"] for r in results) == [0.0, 2.0, 4.0, 6.0]


def test_hostd_check_starts_no_process() -> None:
    settings = parse_settings(
        "models: [{class_path: 'tests.support.toy_process:PidModel', workers: {kind: process, count: 2}}]",
        "test.yaml")
    registry = Registry.from_settings(settings)
    served = registry.get("pid")
    assert served.processes is not None
    assert multiprocessing.active_children() == []
    registry.close()
