"""A ROUTER socket served on the event loop: read, answer concurrently (bounded), drain on stop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import anyio
import structlog
import zmq
import zmq.asyncio

from hostd.tasks import BoundedTasks
from hostd.transports import Shutdown

log = structlog.get_logger("hostd.zmq")

Send = Callable[[list[bytes]], Awaitable[object]]
#: Takes the received frames (routing identity first) and a way to send extra frames (heartbeats);
#: returns the frames to send back, or None.
Respond = Callable[[list[bytes], Send], Awaitable[list[bytes] | None]]


@contextmanager
def router_socket(*, high_water_mark: int, max_message_bytes: int) -> Iterator[zmq.asyncio.Socket]:
    """A ROUTER socket (not yet bound), closed without lingering on exit."""
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.ROUTER)
    # Replies to a peer that has gone are dropped (ROUTER_MANDATORY off), so nothing accumulates;
    # the high-water marks bound what a slow peer can make us queue.
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, high_water_mark)
    sock.setsockopt(zmq.RCVHWM, high_water_mark)
    # Messages a little over the limit get a PAYLOAD_TOO_LARGE reply; far over it, ZeroMQ drops the
    # peer before buffering the whole message.
    sock.setsockopt(zmq.MAXMSGSIZE, 4 * max_message_bytes)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        context.destroy(linger=0)  # term() would block the loop


async def serve_router(sock: zmq.asyncio.Socket, respond: Respond, stop: Shutdown, *, max_in_flight: int,
                       bind: str) -> None:
    """Answer what ``sock`` receives until ``stop``, then what was accepted by the drain deadline."""

    async def answer(frames: list[bytes]) -> None:
        try:
            reply = await respond(frames, sock.send_multipart)
            if reply is not None:
                await sock.send_multipart(reply)
        except Exception:
            log.exception("zmq reply failed", bind=bind)

    async with BoundedTasks(max_in_flight, stop) as replies, anyio.create_task_group() as tg:
        with anyio.CancelScope() as reading:
            tg.start_soon(_cancel_on, stop, reading)
            while True:
                await replies.spawn(answer(await sock.recv_multipart()))


async def _cancel_on(stop: Shutdown, scope: anyio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()
