"""The opt-in uvicorn server (``server: uvicorn``): raw HTTP/1.1 speed with httptools and uvloop."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus
from starlette.applications import Starlette

if TYPE_CHECKING:
    from hostd.transports import TransportContext
    from hostd_http.plugin import HttpSettings


async def serve_uvicorn(app: Starlette, ctx: TransportContext, settings: HttpSettings, *,
                        task_status: TaskStatus[None]) -> None:
    try:
        import uvicorn
    except ImportError as exc:
        raise RuntimeError("server: uvicorn needs uvicorn: pip install 'hostd[uvicorn]'") from exc

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the daemon owns the signals

    config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="off", log_config=None,
                            access_log=settings.access_log,
                            timeout_keep_alive=max(1, int(settings.keep_alive_timeout_s)),
                            timeout_graceful_shutdown=max(1, int(ctx.host.shutdown_grace_s)))
    sock = config.bind_socket()  # a taken port fails here, before anything else starts
    server = Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:
            await anyio.sleep(0.01)
        task_status.started()
        await ctx.stop.wait()
        server.should_exit = True  # stop accepting, finish in-flight requests, then return
