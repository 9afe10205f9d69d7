"""The arq transport: an arq worker inside the daemon, on its event loop, serving ``predict`` jobs.

Clients enqueue with arq's own client, created with msgpack as its serializer
(``create_pool(..., job_serializer=msgpack.packb, job_deserializer=msgpack.unpackb)``):
``await redis.enqueue_job("predict", "iris_model", {...}, _queue_name="hostd:queue")`` and read
``await job.result()``. A failed prediction's result is ``{"code", "message", "details", "type"}``
(see ``hostd_arq.serializer``); with ``job_deserializer=hostd_arq.serializer.deserialize_errors`` it
re-raises as the hostd error (``hostd.errors.InvalidInput`` ...). ``serializer: pickle`` restores
arq's pickles, which let anyone who can write to Redis run code in hostd.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import structlog
from anyio.abc import TaskStatus
from pydantic import ConfigDict, Field

from hostd.hookspecs import RegisterTransport, hookimpl
from hostd.reconnect import RetrySettings, reconnect
from hostd.transports import Transport, TransportContext

if TYPE_CHECKING:
    from arq.connections import RedisSettings

log = structlog.get_logger("hostd.arq")


class ArqSettings(RetrySettings):
    model_config = ConfigDict(extra="forbid")

    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_name: str = "hostd:queue"
    max_jobs: int = Field(default=64, ge=1)  # jobs run at once
    job_timeout_s: float = Field(default=30.0, gt=0)
    keep_result_s: float = Field(default=3600.0, ge=0)  # how long job.result() can be read
    poll_delay_s: float = Field(default=0.05, gt=0)
    # pickle runs whatever code a job carries: only for a Redis no one else can write to.
    serializer: Literal["msgpack", "pickle"] = "msgpack"
    # Redis security: a password (and an ACL user) and TLS (a rediss:// URL). The password may also be
    # in the URL, e.g. redis://hostd:${REDIS_PASSWORD}@host:6379/0; files are relative to the config's folder.
    redis_username: str | None = None
    redis_password_file: str | None = None
    ssl_ca_certs: str | None = None  # the CA that signs Redis's certificate (rediss://)
    ssl_certfile: str | None = None  # a client certificate, if Redis requires one (tls-auth-clients)
    ssl_keyfile: str | None = None

    def redis_settings(self, folder: Path) -> RedisSettings:
        """arq's RedisSettings for ``redis_url`` with the security settings applied."""
        from arq.connections import RedisSettings

        settings = RedisSettings.from_dsn(self.redis_url)
        if self.redis_username is not None:
            settings.username = self.redis_username
        if self.redis_password_file is not None:
            settings.password = (folder / self.redis_password_file).read_text().strip()
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if (value := getattr(self, name)) is not None:
                setattr(settings, name, str(folder / value))
        return settings


async def serve_arq(ctx: TransportContext[ArqSettings], *, task_status: TaskStatus[None]) -> None:
    try:
        from hostd_arq.worker import WorkerSession
    except ImportError as exc:
        raise RuntimeError("the arq transport needs arq: pip install 'hostd[arq]'") from exc
    settings = ctx.settings
    if settings.serializer == "pickle":
        log.warning("arq jobs are pickled: anyone who can write to this Redis can run code in hostd",
                    redis_url=settings.redis_url, queue_name=settings.queue_name)
    redis = settings.redis_settings(ctx.daemon.folder)  # files are read once: a missing one fails the start
    task_status.started()  # readiness does not wait for Redis; reconnect() retries
    await reconnect(lambda: WorkerSession(ctx.dataplane, settings, redis), ctx.stop, settings, service="redis",
                    log=log)


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    register(Transport(name="arq", settings=ArqSettings, serve=serve_arq))
