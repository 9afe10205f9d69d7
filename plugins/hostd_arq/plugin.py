"""The arq transport: an arq worker inside the daemon, on its event loop, serving ``predict`` jobs.

Clients enqueue with arq's own client: ``await redis.enqueue_job("predict", "iris_model", {...},
_queue_name="hostd:queue")`` and read ``await job.result()``; a failed prediction re-raises there as
the hostd error (``hostd.errors.InvalidInput`` ...) with its code and message.
"""

from __future__ import annotations

from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from pydantic import BaseModel, ConfigDict, Field

from hostd.dataplane import DataPlane
from hostd.errors import describe
from hostd.hookspecs import hookimpl
from hostd.transports import Transport, TransportContext

log = structlog.get_logger("hostd.arq")


class ArqSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_name: str = "hostd:queue"
    max_jobs: int = Field(default=64, ge=1)  # jobs run at once
    job_timeout_s: float = Field(default=30.0, gt=0)
    keep_result_s: float = Field(default=3600.0, ge=0)  # how long job.result() can be read
    poll_delay_s: float = Field(default=0.05, gt=0)
    retry_backoff_s: float = Field(default=1.0, gt=0)
    retry_backoff_max_s: float = Field(default=30.0, gt=0)


def make_predict(dataplane: DataPlane) -> Any:
    async def predict(ctx: dict[str, Any], model: str, data: Any, version: str | None = None) -> dict[str, Any]:
        """arq job: one prediction; a HostdError propagates to the client's job.result()."""
        return (await dataplane.predict(model, data, version, transport="arq")).output

    return predict


async def serve_arq(ctx: TransportContext, *, task_status: TaskStatus[None]) -> None:
    try:
        from arq.connections import RedisSettings
        from arq.worker import Worker, func
    except ImportError as exc:
        raise RuntimeError("the arq transport needs arq: pip install 'hostd[arq]'") from exc
    settings: ArqSettings = ctx.settings
    task_status.started()  # readiness does not wait for Redis; the loop below retries
    backoff = settings.retry_backoff_s
    while not ctx.stop.is_set():
        worker = Worker(
            functions=[func(make_predict(ctx.dataplane), name="predict")],
            redis_settings=RedisSettings.from_dsn(settings.redis_url), queue_name=settings.queue_name,
            max_jobs=settings.max_jobs, job_timeout=settings.job_timeout_s, keep_result=settings.keep_result_s,
            poll_delay=settings.poll_delay_s, handle_signals=False,
        )
        try:
            await _run(worker, ctx.stop, ctx.host.shutdown_grace_s)
            backoff = settings.retry_backoff_s
        except Exception as exc:  # Redis down or gone: log, wait, start a fresh worker
            log.warning("redis unavailable; retrying", error=describe(exc), retry_in_s=backoff)
            with anyio.move_on_after(backoff):
                await ctx.stop.wait()
            backoff = min(backoff * 2, settings.retry_backoff_max_s)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await _close(worker)


async def _run(worker: Any, stop: anyio.Event, grace_s: float) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.main)
        await stop.wait()
        # Stop taking jobs, let the running ones finish (a job cut off here is retried by arq later).
        worker.allow_pick_jobs = False
        with anyio.move_on_after(grace_s):
            while any(not task.done() for task in worker.tasks.values()):
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()


async def _close(worker: Any) -> None:
    try:
        await worker.close()
    except Exception as exc:  # the connection is already gone
        log.debug("arq worker close failed", error=str(exc))


@hookimpl
def register_transports(register):  # type: ignore[no-untyped-def]
    register(Transport(name="arq", settings=ArqSettings, serve=serve_arq))
