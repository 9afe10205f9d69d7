"""Keep a connection to a broker (Kafka, Redis) up until shutdown, reconnecting with backoff."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import anyio
from pydantic import BaseModel, Field
from structlog.typing import FilteringBoundLogger

from hostd.errors import describe
from hostd.transports import Shutdown

CLOSE_TIMEOUT_S = 5.0  # closing a broken client must not hold the shutdown up


class RetrySettings(BaseModel):
    """The settings of a transport that reconnects (its settings class derives from this)."""

    retry_backoff_s: float = Field(default=1.0, gt=0)  # doubles up to retry_backoff_max_s
    retry_backoff_max_s: float = Field(default=30.0, gt=0)


class Session(Protocol):
    """One connection's life: ``run`` connects, calls ``connected()``, serves until ``stop`` (and
    returns) or until the connection fails (and raises); ``close`` releases it either way."""

    async def run(self, stop: Shutdown, connected: Callable[[], None]) -> None: ...

    async def close(self) -> None: ...


async def reconnect(new_session: Callable[[], Session], stop: Shutdown, retry: RetrySettings, *, service: str,
                    log: FilteringBoundLogger, **fields: Any) -> None:
    """Run sessions one after another until ``stop``. A session that fails is closed and logged,
    and the next starts after a delay: ``retry_backoff_s``, doubling up to ``retry_backoff_max_s``,
    and back to ``retry_backoff_s`` once a session has connected. ``fields`` go into the log lines."""
    delay = retry.retry_backoff_s

    def connected() -> None:
        nonlocal delay
        delay = retry.retry_backoff_s
        log.info(f"{service} connected", **fields)

    while not stop.is_set():
        session = new_session()
        try:
            await session.run(stop, connected)
            problem = None if stop.is_set() else "the connection ended"
        except Exception as exc:  # the broker is down or went away
            problem = describe(exc)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT_S):
                await session.close()
        if problem is None:
            return
        log.warning(f"{service} unavailable; retrying", error=problem, retry_in_s=delay, **fields)
        with anyio.move_on_after(delay):
            await stop.wait()
        delay = min(delay * 2, retry.retry_backoff_max_s)
