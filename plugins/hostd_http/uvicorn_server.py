"""The opt-in uvicorn server (``server: uvicorn``): raw HTTP/1.1 speed with httptools and uvloop."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus
from starlette.applications import Starlette

if TYPE_CHECKING:
    from hostd.transports import TransportContext
    from hostd_http.plugin import HttpSettings


async def serve_uvicorn(app: Starlette, ctx: TransportContext[HttpSettings], *,
                        task_status: TaskStatus[None]) -> None:
    try:
        import uvicorn
    except ImportError as exc:
        raise RuntimeError("server: uvicorn needs uvicorn: pip install 'hostd[uvicorn]'") from exc

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the daemon owns the signals

    settings = ctx.settings
    config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="off", log_config=None,
                            access_log=settings.access_log,
                            timeout_keep_alive=max(1, int(settings.keep_alive_timeout_s)))
    # Bind here, so a taken port fails before anything else starts (uvicorn's own bind_socket
    # would sys.exit() with no word of which transport failed).
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with ctx.binding("port", f"{settings.host}:{settings.port}"):
        sock = socket.create_server((settings.host, settings.port), family=family)
    server = Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:
            await anyio.sleep(0.01)
        task_status.started()
        await ctx.stop.wait()
        config.timeout_graceful_shutdown = max(1, math.ceil(ctx.stop.remaining()))  # read as it drains
        server.should_exit = True  # stop accepting, finish in-flight requests, then return
