"""What a transport plugin registers and what it is given to serve with."""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel

from hostd.configfile import ENV_PREFIX

if TYPE_CHECKING:
    from hostd.dataplane import DataPlane
    from hostd.settings import HostSettings

S = TypeVar("S", bound=BaseModel)
S_co = TypeVar("S_co", bound=BaseModel, covariant=True)
S_contra = TypeVar("S_contra", bound=BaseModel, contravariant=True)


class Shutdown:
    """Set once, when the daemon stops, with the one deadline by which in-flight work must finish.

    The deadline is set before any transport can see the stop, so every transport drains to the
    same instant; past it (and a moment to write the last replies) the daemon cancels what is left.
    """

    def __init__(self) -> None:
        self._requested = anyio.Event()
        self.deadline = math.inf  # on anyio's clock (anyio.current_time())

    def begin(self, grace_s: float) -> None:
        """Stop now, finishing in-flight work within ``grace_s`` (the daemon calls this, once)."""
        self.deadline = anyio.current_time() + grace_s
        self._requested.set()

    def is_set(self) -> bool:
        return self._requested.is_set()

    async def wait(self) -> None:
        await self._requested.wait()

    def remaining(self) -> float:
        """Seconds left before the deadline (0 once it has passed)."""
        return max(0.0, self.deadline - anyio.current_time())

    def until_deadline(self) -> anyio.CancelScope:
        """A scope cancelled at the deadline, to wait for in-flight work in (enter it after the stop)."""
        return anyio.CancelScope(deadline=self.deadline)


class CannotListen(Exception):
    """A transport could not bind its address; the message says which and how to choose another."""


@dataclass(frozen=True)
class TransportContext(Generic[S_co]):
    """Everything a transport needs: it translates its protocol into ``dataplane`` calls."""

    name: str  # the name the transport is registered and configured under
    dataplane: DataPlane
    settings: S_co  # the transport's own section of host.yaml, validated by its settings class
    daemon: HostSettings  # the whole host.yaml (service title, grace period, ...)
    stop: Shutdown  # stop accepting, finish in-flight work by ``stop.deadline``, return

    @contextmanager
    def binding(self, key: str, address: str,
                errors: tuple[type[BaseException], ...] = (OSError,)) -> Iterator[None]:
        """Bind ``address`` (set by the setting ``key``) inside this block: a failure becomes
        CannotListen, naming the address, the setting and its environment variable."""
        try:
            yield
        except errors as exc:
            where = self.daemon.where(("transports", self.name, key))
            variable = ENV_PREFIX + f"TRANSPORTS__{self.name}__{key}".upper()
            raise CannotListen(f"cannot listen on {address} ({_reason(exc)}); to use another address, set "
                               f"transports.{self.name}.{key} ({where}) or the environment variable "
                               f"{variable}") from exc


def _reason(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)  # OSError and zmq.ZMQError both carry one
    return os.strerror(code) if isinstance(code, int) and code in errno.errorcode else str(exc)


class Serve(Protocol[S_contra]):
    """``serve(ctx, task_status=...)`` calls ``task_status.started()`` once it accepts traffic and
    returns after ``ctx.stop`` is set and its in-flight requests are answered."""

    def __call__(self, ctx: TransportContext[S_contra], *,
                 task_status: TaskStatus[None]) -> Coroutine[Any, Any, None]: ...


@dataclass(frozen=True)
class Transport(Generic[S]):
    name: str
    settings: type[S]
    serve: Serve[S]

