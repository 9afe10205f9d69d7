"""The HTTP transport plugin: Starlette served by uvicorn (or Hypercorn, for HTTP/2) on the daemon's event loop."""

from __future__ import annotations

import resource
from typing import Literal

import structlog
from anyio.abc import TaskStatus
from pydantic import BaseModel, ConfigDict, Field

from hostd.hookspecs import RegisterTransport, hookimpl
from hostd.tls import TlsSettings
from hostd.transports import Transport, TransportContext
from hostd_http.app import create_app
from hostd_http.connections import Connections
from hostd_http.front import Front

log = structlog.get_logger("hostd.http")


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # uvicorn (HTTP/1.1 with httptools and uvloop: the fastest here, and what MLServer and KServe run)
    # or hypercorn (HTTP/1.1 and HTTP/2, cleartext or by ALPN over TLS).
    server: Literal["uvicorn", "hypercorn"] = "uvicorn"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_request_bytes: int = Field(default=1 << 20, ge=1024)
    # A request's whole body must arrive within this many seconds of its headers, else 408 and the
    # connection closes (a stalled upload would hold a connection, and a file descriptor, for ever).
    body_timeout_s: float = Field(default=10.0, gt=0)
    # Connections open at once; one more is closed as soon as it is accepted, so those open keep
    # working and other transports keep their descriptors. At most half the open-file limit.
    max_connections: int = Field(default=1024, ge=1)
    keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    # Hypercorn closes a connection after this many requests (its default, 1000, costs reconnects).
    keep_alive_max_requests: int = Field(default=1_000_000, ge=1)
    access_log: bool = False
    tls: TlsSettings | None = None  # HTTPS (with server: hypercorn, HTTP/2 too, by ALPN); mutual TLS with client_ca


async def serve_http(ctx: TransportContext[HttpSettings], *, task_status: TaskStatus[None]) -> None:
    settings = ctx.settings
    app = create_app(ctx.dataplane, ctx.daemon, settings.max_request_bytes)
    front = Front(app, ctx.dataplane, Connections(connection_limit(settings.max_connections)),
                  body_timeout_s=settings.body_timeout_s)
    if settings.server == "uvicorn":  # imported here: each server costs its imports only when chosen
        from hostd_http.uvicorn_server import serve_uvicorn as serve
    else:
        from hostd_http.hypercorn_server import serve_hypercorn as serve
    await serve(front, ctx, task_status=task_status)


def connection_limit(max_connections: int) -> int:
    """``max_connections``, lowered to half the open-file limit if that is lower: the rest is for
    the other transports, the models' files and the connections over the cap, closed on arrival."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or max_connections <= soft // 2:
        return max_connections
    log.warning("max_connections lowered to half the open-file limit", max_connections=max_connections,
                open_file_limit=soft, limit=soft // 2)
    return max(1, soft // 2)


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    register(Transport(name="http", settings=HttpSettings, serve=serve_http))
