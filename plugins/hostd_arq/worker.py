"""One arq worker (one Redis connection) on the daemon's loop, with arq's own signal handling off."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from arq.connections import RedisSettings
from arq.worker import Worker, func

from hostd import tracing
from hostd.dataplane import DataPlane
from hostd.errors import InvalidInput
from hostd.transports import Shutdown
from hostd_arq.serializer import codec

if TYPE_CHECKING:
    from hostd_arq.plugin import ArqSettings

log = structlog.get_logger("hostd.arq")


def make_predict(dataplane: DataPlane) -> Any:
    async def predict(ctx: dict[str, Any], model: str, data: Any, version: str | None = None,
                      cache: bool = True, traceparent: str | None = None, tracestate: str | None = None,
                      ) -> dict[str, Any]:
        """arq job: one prediction (``cache=False``: from the model, not its cache), known by its job id
        to the prediction log and feedback; a HostdError is stored as its code, message and details.
        ``traceparent`` (and ``tracestate``): the enqueuer's trace, which the job's span continues."""
        await dataplane.until_started()  # the worker may pick a job up before hostd is ready
        with tracing.serve("arq predict", "arq", {"traceparent": traceparent, "tracestate": tracestate},
                           kind="consumer", **{"hostd.model": model, "hostd.request_id": ctx.get("job_id")}):
            with dataplane.refusing("arq", model):
                if not isinstance(model, str) or not model:
                    raise InvalidInput("model must be a model's name (a string)")
                if version is not None and not isinstance(version, str):
                    raise InvalidInput("version must be a string or None")
                if not isinstance(cache, bool):
                    raise InvalidInput("cache must be True or False")
            return (await dataplane.predict(model, data, version, transport="arq", request_id=ctx.get("job_id"),
                                            use_cache=cache)).output

    return predict


class WorkerSession:
    def __init__(self, dataplane: DataPlane, settings: ArqSettings, redis: RedisSettings | None = None) -> None:
        self.connected: Callable[[], None] = lambda: None
        serializer, deserializer = codec(settings.serializer)
        self.worker = Worker(
            functions=[func(make_predict(dataplane), name="predict")],
            redis_settings=redis or RedisSettings.from_dsn(settings.redis_url), queue_name=settings.queue_name,
            max_jobs=settings.max_jobs, job_timeout=settings.job_timeout_s, keep_result=settings.keep_result_s,
            poll_delay=settings.poll_delay_s, handle_signals=False, on_startup=self._on_startup,
            job_serializer=serializer, job_deserializer=deserializer,
        )

    async def _on_startup(self, ctx: dict[Any, Any]) -> None:
        self.connected()  # arq calls this once its Redis pool is up

    async def run(self, stop: Shutdown, connected: Callable[[], None]) -> None:
        self.connected = connected
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.worker.main)
            await stop.wait()
            # Stop taking jobs, let the running ones finish (a job cut off here is retried by arq later).
            self.worker.allow_pick_jobs = False
            with stop.until_deadline():
                while any(not task.done() for task in self.worker.tasks.values()):
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    async def close(self) -> None:
        try:
            await self.worker.close()
        except Exception as exc:  # the connection is already gone
            log.debug("arq worker close failed", error=str(exc))
