"""Process workers: the model runs in ``count`` child processes, so GIL-bound models use every core.

``workers: {kind: process, count: N, share_memory: true}``. With share_memory (the default) one
zygote per model loads the model once and forks the N workers from it, which share its memory
copy-on-write (see hostd.zygote); with ``share_memory: false`` each worker is spawned and loads its
own copy. Either way the daemon holds one pipe per worker and sends each call straight to an idle
one: at most N calls run at once, more wait their turn.

A worker that dies mid-call fails that call with MODEL_ERROR and is replaced at once (with a zygote,
by a fork: the model is not loaded again), so the next request is served. A call that finds its
worker already dead never reached the model and goes to another worker.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from hostd.errors import HostdError, ModelError, ModelLoadError
from hostd.worker_pipe import NotDelivered, RemoteFailure, Worker, WorkerGone, load_or_refuse, serve
from hostd.zygote import Zygote


class Starter(Protocol):
    """How a model's worker processes are started: forked from a zygote, or spawned one by one."""

    def start_worker(self) -> Worker: ...

    def close(self) -> None:
        """Stop every process this starter started (blocking)."""


class ProcessWorkers:
    def __init__(self, settings: dict[str, Any], count: int, name: str) -> None:
        self._count, self._name = count, name
        share = settings.get("workers", {}).get("share_memory", True)
        self._starter: Starter = Zygote(settings, name) if share else Spawner(settings, name)
        # One thread per worker waits on its pipe, so the event loop never blocks on one (pickling
        # happens there too); calls beyond `count` wait in this executor's queue.
        self._threads = ThreadPoolExecutor(count, thread_name_prefix=f"hostd-{name}-pipe")
        # Idle workers; None is a worker not started yet (or lost): the call that takes it starts one.
        self._idle: queue.SimpleQueue[Worker | None] = queue.SimpleQueue()
        for _ in range(count):
            self._idle.put(None)
        self._closed = False

    def warm_up(self) -> None:
        """Start every worker and wait until each has the model (blocking; call it off the event loop)."""
        taken: list[Worker | None] = [self._idle.get() for _ in range(self._count)]
        try:
            for index, worker in enumerate(taken):
                taken[index] = worker or self._starter.start_worker()
            for worker in taken:  # after starting them all: spawned workers load side by side
                assert worker is not None
                try:
                    worker.wait_ready()
                except ModelLoadError as exc:
                    raise ModelLoadError(f"model '{self._name}': a worker process: {exc}") from exc
        finally:
            for worker in taken:
                self._idle.put(None if worker is None or worker.closed else worker)

    async def run(self, inputs: list[Any]) -> list[Any]:
        return await asyncio.get_running_loop().run_in_executor(self._threads, self._call, inputs)

    def close(self) -> None:
        """Stop every worker process (blocking). Calls still running fail with MODEL_ERROR."""
        self._closed = True
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._starter.close()
        while not self._idle.empty():
            worker = self._idle.get()
            if worker is not None:
                worker.close()

    def _call(self, inputs: list[Any]) -> list[Any]:
        # A worker that died while idle is found when the call is sent to it, and replaced; the
        # model never saw the inputs, so another worker takes them. At most `count` can be dead.
        for _ in range(self._count + 1):
            try:
                return self._call_once(inputs)
            except NotDelivered:
                continue
        raise ModelError(f"model '{self._name}': no worker process could take the call")

    def _call_once(self, inputs: list[Any]) -> list[Any]:
        worker = self._take()
        try:
            return worker.call(inputs)
        except NotDelivered:
            raise
        except WorkerGone:
            raise ModelError(f"model '{self._name}': {self._what_ended(worker)}") from None
        except ModelLoadError as exc:  # a spawned worker (share_memory: false) did not load
            raise ModelError(f"model '{self._name}': a new worker process failed: {exc}") from exc
        except RemoteFailure as exc:
            raise ModelError(f"model '{self._name}' failed: {exc}") from exc
        finally:
            self._give_back(worker)

    def _what_ended(self, worker: Worker) -> str:
        if self._closed:
            return "its worker processes were stopped during the call"
        if worker.pid is None:
            return "a new worker process exited before it was ready; another will be started"
        return "a worker process died during the call; it has been replaced"

    def _take(self) -> Worker:
        worker = self._idle.get()  # never waits long: there are as many threads as workers
        if worker is not None:
            return worker
        try:
            return self._starter.start_worker()
        except HostdError:
            self._idle.put(None)
            raise
        except Exception as exc:
            self._idle.put(None)
            raise ModelError(f"model '{self._name}': could not start a worker process: "
                             f"{type(exc).__name__}: {exc}") from exc

    def _give_back(self, worker: Worker) -> None:
        if self._closed:
            worker.close()
            self._idle.put(None)
        elif worker.closed:
            self._idle.put(self._replacement())
        else:
            self._idle.put(worker)

    def _replacement(self) -> Worker | None:
        try:
            return self._starter.start_worker()
        except Exception:  # the next call that takes this slot tries again, and says why if it fails
            return None


class Spawner:
    """``share_memory: false``: each worker is spawned and loads its own copy of the model. For models
    whose libraries are not safe to fork after loading (e.g. ones that start threads when imported
    or loaded: a forked child gets their locks but not the threads)."""

    def __init__(self, settings: dict[str, Any], name: str) -> None:
        self._settings, self._name = settings, name
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess] = []
        self._lock = threading.Lock()
        self._closed = False

    def start_worker(self) -> Worker:
        """A new worker, loading the model (``Worker.wait_ready`` waits for that)."""
        with self._lock:
            if self._closed:
                raise ModelError(f"model '{self._name}': its worker processes are closed")
            self._processes = [p for p in self._processes if p.is_alive()]  # is_alive() reaps the dead
            ours, theirs = self._context.Pipe()
            process = self._context.Process(target=run_alone, args=(self._settings, theirs),
                                            name=f"hostd-worker-{self._name}", daemon=True)
            process.start()
            theirs.close()  # the worker must hold the only copy, or its death would not be EOF here
            self._processes.append(process)
            return Worker(ours)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for process in self._processes:
                process.kill()
            for process in self._processes:
                process.join()


def run_alone(settings: dict[str, Any], conn: Connection) -> None:
    """A spawned worker process: load the model, then serve calls."""
    predict = load_or_refuse(settings, conn)
    if predict is not None:
        serve(conn, predict)
