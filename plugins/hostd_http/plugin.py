"""The HTTP transport plugin: Starlette served by Hypercorn on the daemon's event loop."""

from __future__ import annotations

import logging
from functools import partial
from typing import Literal

import anyio
from anyio.abc import TaskStatus
from hypercorn.asyncio import serve
from hypercorn.config import Config
from pydantic import BaseModel, ConfigDict, Field

from hostd.hookspecs import RegisterTransport, hookimpl
from hostd.transports import Transport, TransportContext
from hostd_http.app import create_app
from hostd_http.uvicorn_server import serve_uvicorn


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # hypercorn (default: HTTP/1.1 and HTTP/2) or uvicorn (HTTP/1.1 with httptools: faster).
    server: Literal["hypercorn", "uvicorn"] = "hypercorn"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_request_bytes: int = Field(default=1 << 20, ge=1024)
    keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    # Hypercorn closes a connection after this many requests (its default, 1000, costs reconnects).
    keep_alive_max_requests: int = Field(default=1_000_000, ge=1)
    access_log: bool = False


async def serve_http(ctx: TransportContext[HttpSettings], *, task_status: TaskStatus[None]) -> None:
    settings = ctx.settings
    app = create_app(ctx.dataplane, ctx.daemon, settings.max_request_bytes)
    if settings.server == "uvicorn":
        await serve_uvicorn(app, ctx, task_status=task_status)
        return
    config = Config()  # explicit fields: Config.from_mapping would silently ignore a misspelt key
    config.bind = [f"{settings.host}:{settings.port}"]
    # Bind here, so a taken port fails before Hypercorn starts (it would leak its lifespan task),
    # then hand Hypercorn the bound socket.
    with ctx.binding("port", f"{settings.host}:{settings.port}"):
        config.bind = [f"fd://{sock.detach()}" for sock in config.create_sockets().insecure_sockets]
    config.keep_alive_timeout = settings.keep_alive_timeout_s
    config.keep_alive_max_requests = settings.keep_alive_max_requests
    # Hypercorn's own lines go through stdlib logging, so they come out in hostd's format.
    config.accesslog = logging.getLogger("hypercorn.access") if settings.access_log else None
    config.errorlog = logging.getLogger("hypercorn.error")

    listening = anyio.Event()

    async def serving() -> None:
        # Hypercorn awaits the shutdown trigger only once its sockets listen.
        listening.set()
        await ctx.stop.wait()
        config.graceful_timeout = ctx.stop.remaining()  # read by Hypercorn as it starts to drain

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(serve, app, config, shutdown_trigger=serving, mode="asgi"))  # type: ignore[arg-type]
        await listening.wait()
        task_status.started()


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    register(Transport(name="http", settings=HttpSettings, serve=serve_http))
