"""What a transport plugin registers and what it is given to serve with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel

if TYPE_CHECKING:
    from hostd.dataplane import DataPlane
    from hostd.settings import HostSettings


@dataclass(frozen=True)
class TransportContext:
    """Everything a transport needs: it translates its protocol into ``dataplane`` calls."""

    dataplane: DataPlane
    settings: Any  # an instance of the transport's own settings class
    host: HostSettings
    stop: anyio.Event  # set once on shutdown: stop accepting, finish in-flight work, return


#: ``serve(ctx, task_status=...)`` calls ``task_status.started()`` once it accepts traffic and
#: returns after ``ctx.stop`` is set and its in-flight requests are answered.
ServeFunction = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Transport:
    name: str
    settings: type[BaseModel]
    serve: ServeFunction

