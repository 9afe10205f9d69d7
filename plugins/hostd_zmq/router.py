"""A ROUTER socket served on the event loop: read, answer concurrently (bounded), drain on stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio
import structlog
import zmq
import zmq.asyncio

log = structlog.get_logger("hostd.zmq")

Send = Callable[[list[bytes]], Awaitable[object]]
#: Takes the received frames (routing identity first) and a way to send extra frames (heartbeats);
#: returns the frames to send back, or None.
Respond = Callable[[list[bytes], Send], Awaitable[list[bytes] | None]]


async def serve_router(bind: str, respond: Respond, stop: anyio.Event, *, max_in_flight: int,
                       high_water_mark: int, max_message_bytes: int, grace_s: float,
                       started: Callable[[], None]) -> None:
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
        sock.bind(bind)
        started()
        # One asyncio task per request (not anyio's task group and semaphore: on this per-message
        # path they cost ~15% of the loop, looking up the async backend on every call).
        slots = asyncio.Semaphore(max_in_flight)
        replies: set[asyncio.Task[None]] = set()

        async def answer(frames: list[bytes]) -> None:
            try:
                reply = await respond(frames, sock.send_multipart)
                if reply is not None:
                    await sock.send_multipart(reply)
            except Exception:
                log.exception("zmq reply failed", bind=bind)
            finally:
                slots.release()

        try:
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as reading:
                    tg.start_soon(_cancel_on, stop, reading)
                    while True:
                        frames = await sock.recv_multipart()
                        await slots.acquire()
                        reply = asyncio.create_task(answer(frames))
                        replies.add(reply)
                        reply.add_done_callback(replies.discard)
                # Stopped reading: wait for what was accepted (bounded by the grace period).
                with anyio.move_on_after(grace_s):
                    await asyncio.gather(*replies)
        finally:
            for reply in replies:
                reply.cancel()
    finally:
        sock.close(linger=0)
        context.destroy(linger=0)  # term() would block the loop


async def _cancel_on(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()
