"""Process workers: the model runs in child processes, forked from one zygote that loaded it (so they
share its memory) or, with ``share_memory: false``, each loading its own; a child that dies is replaced.

SharingModel (below, imported by the zygote and the workers from this module) holds an 8 MiB buffer
written when the model loads, and reports which process ran it and how much of that buffer's memory
the process shares with others (from /proc/self/smaps). A request naming a ``gate`` file stays in the
model until the file exists, so a test holds workers busy with no sleeps.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import psutil
import pytest
from pydantic import BaseModel

from hostd import MLModel
from hostd.configfile import parse_settings
from hostd.dataplane import DataPlane
from hostd.errors import ModelError, ModelLoadError
from hostd.process_workers import ProcessWorkers
from hostd.registry import Registry
from tests.conftest import HostdProcess

pytestmark = pytest.mark.anyio
WEIGHTS_KB = 8 * 1024
PATIENCE_S = 30.0  # a hang guard for what a test waits for, not a measure of speed


class Probe(BaseModel):
    x: float = 0
    crash: bool = False  # the worker process exits at once
    fail: str = ""  # raise ValueError(fail)
    picky: str = ""  # raise an exception that cannot be pickled back
    gate: str = ""  # stay in the model until this file exists


class Seen(BaseModel):
    y: float
    pid: int
    ppid: int
    address: int  # of the model's buffer
    shared_kb: int  # of the buffer's memory, shared with other processes
    private_kb: int
    started: float  # time.monotonic() (one clock for every process on Linux)
    ended: float


class PickyError(Exception):
    def __init__(self, first: str, second: str) -> None:  # its pickle carries one argument: unpickling fails
        super().__init__(f"{first} {second}")


class SharingModel(MLModel):
    display_name = "Sharing"
    qualified_name = "sharing"
    description = "Doubles x, says which process did it and whether it shares the model's buffer"
    version = "1.0.0"
    input_schema = Probe
    output_schema = Seen

    def __init__(self) -> None:
        self.weights = np.ones(WEIGHTS_KB * 1024 // 8)  # written now: private to the loading process

    def predict(self, data: Probe) -> Seen:
        started = time.monotonic()
        if data.crash:
            os._exit(3)  # a crash that no exception handler can catch
        if data.fail:
            raise ValueError(data.fail)
        if data.picky:
            raise PickyError(data.picky, "(picky)")
        if data.gate:
            Path(f"{data.gate}.{data.x:g}.in").touch()  # the test sees the call in the model
            deadline = started + PATIENCE_S
            while not os.path.exists(data.gate) and time.monotonic() < deadline:
                time.sleep(0.002)
        address = self.weights.ctypes.data
        shared, private = buffer_memory_kb(address)
        return Seen(y=data.x * 2, pid=os.getpid(), ppid=os.getppid(), address=address, shared_kb=shared,
                    private_kb=private, started=started, ended=time.monotonic())


def buffer_memory_kb(address: int) -> tuple[int, int]:
    """(shared, private) kB resident in the mappings that hold the buffer at ``address``."""
    shared = private = 0
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split()[0]
            if "-" in first and ":" not in first:  # a mapping's header line: "start-end perms ..."
                start, end = (int(part, 16) for part in first.split("-"))
                inside = start <= address + WEIGHTS_KB * 1024 - 1 and address < end
            elif inside and first in ("Shared_Clean:", "Shared_Dirty:"):
                shared += int(line.split()[1])
            elif inside and first in ("Private_Clean:", "Private_Dirty:"):
                private += int(line.split()[1])
    return shared, private


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


#: start(model_entry_yaml) -> a ready DataPlane whose process workers are started (closed at teardown).
Start = Callable[[str], Awaitable[DataPlane]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    registries: list[Registry] = []

    async def start_one(entry: str) -> DataPlane:
        registry = Registry.from_settings(parse_settings(f"models: [{entry}]", "test.yaml"))
        registries.append(registry)
        await anyio.to_thread.run_sync(registry.warm_up)
        dataplane = DataPlane(registry)
        dataplane.set_ready()
        return dataplane

    yield start_one
    for registry in registries:
        await anyio.to_thread.run_sync(registry.close)


def sharing(count: int = 2, share_memory: bool = True) -> str:
    return ("{class_path: 'tests.test_process_workers:SharingModel', timeout_ms: 30000, batching: {max_batch_size: 1},"
            f" workers: {{kind: process, count: {count}, share_memory: {str(share_memory).lower()}}}}}")


@pytest.fixture
async def plane(start: Start) -> DataPlane:
    return await start("{class_path: 'tests.support.toy_process:PidModel', timeout_ms: 20000,"
                       " workers: {kind: process, count: 2}, batching: {max_batch_size: 1}}")


async def predict_many_times(dataplane: DataPlane, count: int, model: str = "pid",
                             payload: Callable[[int], dict[str, Any]] = lambda x: {"x": x}) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []

    async def one(x: int) -> None:
        results.append((await dataplane.predict(model, payload(x))).output)

    async with anyio.create_task_group() as tg:
        for x in range(count):
            tg.start_soon(one, x)
    return results


async def held_at_once(dataplane: DataPlane, gate: Path, count: int, in_model: int) -> list[dict[str, Any]]:
    """``count`` calls at once, held in the model until ``in_model`` of them are in it; then the gate opens."""
    results: list[dict[str, Any]] = []

    async def run() -> None:
        results.extend(await predict_many_times(dataplane, count, "sharing", lambda x: {"x": x, "gate": str(gate)}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await until(lambda: len(list(gate.parent.glob(f"{gate.name}.*.in"))) >= in_model, "calls in the model")
        gate.touch()
    return results


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, f"waited {PATIENCE_S} s for {what}"
        await anyio.sleep(0.01)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


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


def most_at_once(results: list[dict[str, Any]]) -> int:
    """The most calls that were in the model at the same time."""
    events = sorted([(r["started"], 1) for r in results] + [(r["ended"], -1) for r in results])
    running = most = 0
    for _, change in events:  # at equal times an end (-1) sorts before a start
        running += change
        most = max(most, running)
    return most


@pytest.mark.timeout(120)
async def test_workers_are_forks_of_one_zygote_and_share_its_copy_of_the_model(
        start: Start, gates: Callable[[], Path]) -> None:
    dataplane = await start(sharing(count=2))
    results = await held_at_once(dataplane, gates(), 2, in_model=2)  # two calls at once: both workers
    assert len({r["pid"] for r in results}) == 2 and os.getpid() not in {r["pid"] for r in results}
    (zygote,) = {r["ppid"] for r in results}
    assert psutil.Process(zygote).ppid() == os.getpid()
    assert len({r["address"] for r in results}) == 1
    for seen in results:  # the buffer's pages are the zygote's, not copies
        assert seen["shared_kb"] >= 0.9 * WEIGHTS_KB and seen["private_kb"] <= 0.1 * WEIGHTS_KB, seen


@pytest.mark.timeout(120)
async def test_without_share_memory_each_worker_loads_its_own_copy(start: Start, gates: Callable[[], Path]) -> None:
    dataplane = await start(sharing(count=2, share_memory=False))
    results = await held_at_once(dataplane, gates(), 2, in_model=2)
    assert len({r["pid"] for r in results}) == 2
    assert {r["ppid"] for r in results} == {os.getpid()}
    for seen in results:
        assert seen["private_kb"] >= 0.9 * WEIGHTS_KB and seen["shared_kb"] <= 0.1 * WEIGHTS_KB, seen


@pytest.mark.timeout(120)
async def test_the_models_exception_comes_back_as_model_error_with_its_message(start: Start) -> None:
    dataplane = await start(sharing(count=1))
    with pytest.raises(ModelError, match=r"^model 'sharing' failed: ValueError: no such digit$") as raised:
        await dataplane.predict("sharing", {"fail": "no such digit"})
    model_exception = raised.value.__cause__
    assert isinstance(model_exception, ValueError)
    assert "raise ValueError(data.fail)" in str(model_exception.__cause__)  # the worker's traceback, for the log
    with pytest.raises(ModelError, match=r"^model 'sharing' failed: PickyError: odd \(picky\)$"):
        await dataplane.predict("sharing", {"picky": "odd"})
    assert (await dataplane.predict("sharing", {"x": 1})).output["y"] == 2  # the worker lives on


@pytest.mark.timeout(120)
async def test_a_worker_that_dies_is_replaced_by_a_fork_not_a_new_load(start: Start) -> None:
    dataplane = await start(sharing(count=1))
    before = (await dataplane.predict("sharing", {"x": 1})).output
    with pytest.raises(ModelError, match="a worker process died during the call; it has been replaced"):
        await dataplane.predict("sharing", {"crash": True})
    after = (await dataplane.predict("sharing", {"x": 2})).output
    assert after["y"] == 4 and after["pid"] != before["pid"] and after["ppid"] == before["ppid"]


@pytest.mark.timeout(120)
async def test_a_call_to_a_worker_that_died_while_idle_goes_to_a_new_one(start: Start) -> None:
    dataplane = await start(sharing(count=1))
    before = (await dataplane.predict("sharing", {"x": 1})).output
    os.kill(before["pid"], signal.SIGKILL)
    await until(lambda: gone(before["pid"]), "the worker to die")
    after = (await dataplane.predict("sharing", {"x": 2})).output  # no error: the model never saw it
    assert after["y"] == 4 and after["pid"] != before["pid"]


@pytest.mark.timeout(120)
async def test_the_workers_die_with_their_zygote_and_a_new_zygote_serves(start: Start) -> None:
    dataplane = await start(sharing(count=2))
    zygote = psutil.Process((await dataplane.predict("sharing", {"x": 1})).output["ppid"])
    workers = zygote.children()
    assert len(workers) == 2
    zygote.kill()
    await until(lambda: all(gone(worker.pid) for worker in workers), "the workers to die with their zygote")
    results = await predict_many_times(dataplane, 4, "sharing")
    assert sorted(r["y"] for r in results) == [0.0, 2.0, 4.0, 6.0]
    (new_zygote,) = {r["ppid"] for r in results}
    assert new_zygote != zygote.pid and psutil.Process(new_zygote).ppid() == os.getpid()


@pytest.mark.timeout(120)
async def test_at_most_count_calls_run_at_once_and_the_rest_wait(start: Start, gates: Callable[[], Path]) -> None:
    dataplane = await start(sharing(count=2))
    results = await held_at_once(dataplane, gates(), 5, in_model=2)
    assert sorted(r["y"] for r in results) == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert len({r["pid"] for r in results}) == 2
    assert most_at_once(results) == 2


@pytest.mark.timeout(120)
async def test_close_stops_the_zygote_and_every_worker_even_mid_call(gates: Callable[[], Path]) -> None:
    registry = Registry.from_settings(parse_settings(f"models: [{sharing(count=2)}]", "test.yaml"))
    await anyio.to_thread.run_sync(registry.warm_up)
    dataplane = DataPlane(registry)
    dataplane.set_ready()
    seen = (await dataplane.predict("sharing", {"x": 1})).output
    zygote = psutil.Process(seen["ppid"])
    started = [zygote.pid, *(worker.pid for worker in zygote.children())]
    gate, failed = gates(), []

    async def held() -> None:  # a call in the model when close() comes (a drain would have waited for it)
        with pytest.raises(ModelError, match="stopped during the call"):
            await dataplane.predict("sharing", {"x": 2, "gate": str(gate)})
        failed.append(True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(held)
        await until(lambda: len(list(gate.parent.glob(f"{gate.name}.*.in"))) == 1, "the call in the model")
        await anyio.to_thread.run_sync(registry.close)
    assert failed == [True]
    assert len(started) == 3 and not any(psutil.pid_exists(pid) for pid in started)


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_hostd_serves_digits_from_two_forked_workers_that_die_with_it(start_hostd: Callable[..., HostdProcess]
                                                                      ) -> None:
    server = start_hostd({"models": [{"class_path": "digits_model.model:DigitsModel",
                                      "workers": {"kind": "process", "count": 2}}]})
    from sklearn.datasets import load_digits  # here: the zygotes of the other tests import this module

    digits = load_digits()
    for index in range(10):
        response = httpx.post(f"{server.url}/api/models/digits_model/prediction",
                              json={"image": digits.images[index].astype(int).tolist()}, timeout=PATIENCE_S)
        assert response.status_code == 200 and response.json()["digit"] == digits.target[index], response.text
    (zygote,) = [child for child in psutil.Process(server.proc.pid).children() if child.children()]
    tree = [zygote, *zygote.children()]
    assert len(tree) == 3
    server.proc.kill()  # no clean shutdown: the zygote reads EOF on its pipe and takes its workers down
    server.proc.wait()
    deadline = time.monotonic() + PATIENCE_S
    while not all(gone(process.pid) for process in tree):
        assert time.monotonic() < deadline, "the zygote or a worker outlived the daemon"
        time.sleep(0.02)


@pytest.mark.parametrize("share_memory", [True, False])
def test_a_model_that_does_not_load_in_the_workers_fails_warm_up_saying_why(share_memory: bool) -> None:
    workers = ProcessWorkers({"class_path": "tests.nowhere:Model", "workers": {"share_memory": share_memory}},
                             2, "ghost")
    try:
        with pytest.raises(ModelLoadError, match=r"cannot import 'tests.nowhere:Model'"):
            workers.warm_up()
    finally:
        workers.close()


def test_each_forked_worker_draws_its_own_random_numbers() -> None:
    """A fork copies numpy's global random state; a worker reseeds it (hostd.zygote._reseed)."""
    from hostd.zygote import _reseed

    def first_draws(reseed: bool) -> set[bytes]:
        np.random.seed(16)  # the state the children copy
        read, write = os.pipe()
        children = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:  # the child only draws a number and leaves
                if reseed:
                    _reseed()
                os.write(write, np.random.random().hex().encode() + b"\n")
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        os.close(write)
        with os.fdopen(read, "rb") as drawn:
            return set(drawn.read().split())

    assert len(first_draws(reseed=False)) == 1  # what a plain fork does
    assert len(first_draws(reseed=True)) == 2
