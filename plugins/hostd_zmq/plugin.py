"""The ZeroMQ transport (pyzmq): the JSON envelope on a ROUTER socket, and zerorpc on a second one."""

from __future__ import annotations

from contextlib import ExitStack

import anyio
import zmq
from anyio.abc import TaskStatus
from pydantic import BaseModel, ConfigDict, Field

from hostd.hookspecs import RegisterTransport, hookimpl
from hostd.transports import Transport, TransportContext
from hostd_zmq import envelope_router, zerorpc
from hostd_zmq.curve import CurveSettings, curve_server
from hostd_zmq.router import Respond, router_socket, serve_router


class ZmqSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bind: str = "tcp://127.0.0.1:5555"
    zerorpc_bind: str | None = "tcp://127.0.0.1:4242"  # null: no zerorpc endpoint
    max_message_bytes: int = Field(default=1 << 20, ge=1024)
    max_in_flight: int = Field(default=1024, ge=1)  # per socket; past it we stop reading
    # Messages queued per peer each way; a DEALER that stops reading holds at most this many replies.
    high_water_mark: int = Field(default=1_000, ge=1)
    # CURVE encryption and client authentication on both sockets (see hostd_zmq.curve).
    curve: CurveSettings | None = None


async def serve_zmq(ctx: TransportContext[ZmqSettings], *, task_status: TaskStatus[None]) -> None:
    settings = ctx.settings
    limit = settings.max_message_bytes
    endpoints = [("bind", settings.bind, envelope_router.responder(ctx.dataplane, limit))]
    if settings.zerorpc_bind:
        endpoints.append(("zerorpc_bind", settings.zerorpc_bind, zerorpc.responder(ctx.dataplane, limit)))
    async with anyio.create_task_group() as tg:
        for key, bind, respond in endpoints:
            await tg.start(_serve_one, ctx, key, bind, respond)
        task_status.started()


async def _serve_one(ctx: TransportContext[ZmqSettings], key: str, bind: str, respond: Respond, *,
                     task_status: TaskStatus[None]) -> None:
    settings = ctx.settings
    with ExitStack() as stack:
        sock = stack.enter_context(router_socket(high_water_mark=settings.high_water_mark,
                                                 max_message_bytes=settings.max_message_bytes))
        if settings.curve is not None:
            stack.enter_context(curve_server(sock, settings.curve, ctx.daemon.folder))
        with ctx.binding(key, bind, errors=(zmq.ZMQError,)):
            sock.bind(bind)
        task_status.started()
        # Who each peer is: the CURVE client's key name (or nobody, without CURVE), when keys are checked.
        guard = ctx.dataplane.guard
        identify = (lambda user: guard.named(user)) if guard.active else None
        await serve_router(sock, respond, ctx.stop, max_in_flight=settings.max_in_flight, bind=bind,
                           identify=identify, curve=settings.curve is not None)


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    register(Transport(name="zmq", settings=ZmqSettings, serve=serve_zmq))
