"""A zygote: one process per model that loads the model once and forks its workers from that state,
so N workers share one copy of the model's memory (copy-on-write) instead of loading N copies.

The daemon cannot fork itself: it has threads and an event loop that a child would inherit
mid-flight. So the zygote is *spawned* (a fresh interpreter), loads the model, freezes the garbage
collector's view of it, and from then on only waits for fork requests: it runs no thread of its own,
which is what makes its ``os.fork()`` safe. Each request carries the worker's end of a new pipe
(passed as a file descriptor over the control pipe), so the daemon talks to each worker directly,
with no hop through the zygote.

What ends what, so nothing outlives the daemon:
- the daemon closes the control pipe (``close()``, or by dying): the zygote kills its workers,
  waits for them and exits;
- the zygote dies: on Linux its workers get SIGKILL (PR_SET_PDEATHSIG); elsewhere they exit when
  the daemon closes their pipes.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

from hostd.errors import ModelError, ModelLoadError
from hostd.worker_pipe import Predict, Worker, WorkerGone, greet, greeting, load_or_refuse, serve

STOP_S = 10.0  # how long a zygote may take to stop its workers before it is killed
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class Zygote:
    """The daemon's handle on one model's zygote. ``start_worker`` starts the zygote first if it is
    not running (the first call loads the model; a zygote that died is started again)."""

    def __init__(self, settings: dict[str, Any], name: str) -> None:
        self._settings, self._name = settings, name
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._control: Connection | None = None
        self._lock = threading.Lock()  # one fork request at a time on the control pipe
        self._closed = False

    def start_worker(self) -> Worker:
        """A new worker forked from the loaded model (ready at once: nothing left to load)."""
        with self._lock:
            if self._closed:
                raise ModelError(f"model '{self._name}': its worker processes are closed")
            if self._process is None or not self._process.is_alive():
                self._start()
            assert self._process is not None and self._control is not None
            ours, theirs = self._context.Pipe()
            try:
                send_handle(self._control, theirs.fileno(), self._process.pid)
            finally:
                theirs.close()  # the worker must hold the only copy, or its death would not be EOF here
            return Worker(ours)

    def close(self) -> None:
        """Stop the zygote and every worker it forked (blocking)."""
        with self._lock:
            self._closed = True
            self._stop()

    def _start(self) -> None:
        self._stop()  # a zygote that died: reap it
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=run_zygote, args=(self._settings, theirs),
                                        name=f"hostd-zygote-{self._name}", daemon=True)
        process.start()
        theirs.close()
        try:
            greeting(ours)
        except (WorkerGone, ModelLoadError) as exc:
            ours.close()
            process.join()
            ending = f" (exit code {process.exitcode})" if isinstance(exc, WorkerGone) else ""
            raise ModelLoadError(f"model '{self._name}': its zygote process: {exc}{ending}") from exc
        self._process, self._control = process, ours

    def _stop(self) -> None:
        if self._control is not None:
            self._control.close()  # the zygote reads EOF: it kills its workers and exits
        if self._process is not None:
            self._process.join(STOP_S)
            if self._process.is_alive():
                self._process.kill()  # its workers die with it (PR_SET_PDEATHSIG)
                self._process.join()
        self._process, self._control = None, None


def run_zygote(settings: dict[str, Any], control: Connection) -> None:
    """The zygote process: load the model, then fork a worker for each pipe the daemon sends."""
    predict = load_or_refuse(settings, control)
    if predict is None:
        return
    # Garbage from loading is freed before the fork, and what remains goes to the collector's
    # permanent generation: a collection in a worker then never writes to (so never copies) it.
    gc.collect()
    gc.freeze()
    greet(control)
    workers: set[int] = set()
    try:
        while True:
            try:
                fd = recv_handle(control)
            except EOFError:
                return
            workers.add(_fork_worker(Connection(fd), control, predict))
            _reap(workers)
    finally:
        _stop_workers(workers)


def _fork_worker(conn: Connection, control: Connection, predict: Predict) -> int:
    zygote = os.getpid()
    pid = os.fork()
    if pid:
        conn.close()  # the worker holds the only copy
        return pid
    status = 1
    try:
        control.close()  # only the zygote takes fork requests
        _die_with(zygote)
        _reseed()
        serve(conn, predict)
        status = 0
    finally:
        os._exit(status)  # never return into the zygote's loop, nor run its exit handlers


def _reseed() -> None:
    """A fork copies numpy's global random state: without this, every worker of a model that samples
    (a non-deterministic one) would draw the same numbers. Python's own random reseeds itself at fork."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # from the OS's entropy


def _die_with(parent: int) -> None:
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


def _reap(workers: set[int]) -> None:
    """Collect workers that exited (each would stay a zombie until then)."""
    while workers:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        workers.discard(pid)


def _stop_workers(workers: set[int]) -> None:
    # Only PIDs not yet reaped are killed: such a PID cannot belong to another process yet.
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    for pid in workers:
        os.waitpid(pid, 0)
