"""One worker process at the end of a pipe: the daemon's handle on it (``Worker``) and the loop the
worker runs (``serve``). The daemon sends a list of inputs; the worker answers with the outputs, or
with the exception its model raised.

Whoever starts the process (a zygote forking it, or a spawn) hands it one end of a duplex pipe and
keeps nothing else of it: the worker holds the only copy of its end, so when it dies the daemon
reads EOF, and when the daemon closes its end (or dies) the worker reads EOF and exits.
"""

from __future__ import annotations

import os
import pickle
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from hostd.errors import ModelLoadError
from hostd.loading import load_model
from hostd.model import batch_function
from hostd.settings import ModelSettings

#: A model's predict_batch: inputs in, one output per input out.
Predict = Callable[[list[Any]], Any]


class WorkerGone(Exception):
    """The worker process ended during the call (or before it was ready): its pipe is closed."""


class NotDelivered(WorkerGone):
    """The worker was gone before the call reached it: the model never saw the inputs."""


class RemoteTraceback(Exception):
    """Where the model raised, in the worker: the ``__cause__`` of the exception brought back."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class RemoteFailure(Exception):
    """The model raised an exception that could not be pickled; this carries ``Type: message``."""


class Worker:
    """The daemon's end of one worker's pipe. Blocking: call it from a thread, never the loop."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pid: int | None = None  # known once the worker said it is ready
        self.closed = False

    def wait_ready(self) -> None:
        """Wait for the worker's first message: its PID, or why it could not load the model."""
        if self.pid is None:
            try:
                self.pid = greeting(self.conn)
            except Exception:
                self.close()
                raise

    def call(self, inputs: list[Any]) -> list[Any]:
        """The model's outputs for ``inputs``; raises the model's own exception if it raised."""
        self.wait_ready()
        try:
            self.conn.send(inputs)  # pickles first: inputs that do not pickle raise before a byte is sent
        except OSError as exc:
            self.close()
            raise NotDelivered("the worker process was gone before the call") from exc
        try:
            reply = self.conn.recv_bytes()
        except (EOFError, OSError) as exc:
            self.close()
            raise WorkerGone("the worker process died during the call") from exc
        ok, value, trace = pickle.loads(reply)
        if ok:
            return value  # type: ignore[no-any-return]
        error = value if isinstance(value, BaseException) else RemoteFailure(value)
        raise error from RemoteTraceback(trace)

    def close(self) -> None:
        self.closed = True
        self.conn.close()


def serve(conn: Connection, predict: Predict) -> None:
    """The worker's loop: say it is ready, then answer each call until the daemon closes the pipe."""
    greet(conn)
    while True:
        try:
            inputs = conn.recv()
        except EOFError:
            return
        conn.send_bytes(_reply(predict, inputs))


def load_or_refuse(settings: dict[str, Any], conn: Connection) -> Predict | None:
    """In a new worker (or zygote) process: the model's predict_batch, built from its settings; or
    None, having told the daemon on ``conn`` why the model did not load."""
    # Ctrl-C reaches the whole process group; the daemon drains its requests, then stops its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return batch_function(load_model(ModelSettings.model_validate(settings)))  # type: ignore[no-any-return]
    except Exception as exc:
        refuse(conn, exc)
        return None


def greet(conn: Connection) -> None:
    """The first message a worker (or a zygote) sends: it loaded the model, here is its PID."""
    conn.send((True, os.getpid()))


def refuse(conn: Connection, exc: BaseException) -> None:
    """The first message instead, when the model did not load: why."""
    conn.send((False, f"{type(exc).__name__}: {exc}"))


def greeting(conn: Connection) -> int:
    """Read the first message: the process's PID, or ModelLoadError saying why it has none, or
    WorkerGone if it exited first."""
    try:
        ready, value = conn.recv()
    except (EOFError, OSError) as exc:
        raise WorkerGone("the process exited before it had loaded the model") from exc
    if not ready:
        raise ModelLoadError(f"the model did not load: {value}")
    return int(value)


def _reply(predict: Predict, inputs: list[Any]) -> bytes:
    try:
        return pickle.dumps((True, list(predict(inputs)), ""))
    except Exception as exc:  # the model's, or outputs that do not pickle: the daemon maps it
        return pickle.dumps((False, _portable(exc), traceback.format_exc()))


def _portable(exc: Exception) -> Exception | str:
    """``exc`` if the daemon can rebuild it from a pickle (the daemon's kernel maps its type, e.g. an
    ml_base schema error is INVALID_INPUT), else ``Type: message``: many exception classes take
    constructor arguments their pickle does not carry."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return f"{type(exc).__name__}: {exc}"
    return exc
