"""A ROUTER socket served on the event loop: read, answer concurrently (bounded), drain on stop."""

from __future__ import annotations

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
        slots = anyio.Semaphore(max_in_flight)

        async def answer(frames: list[bytes]) -> None:
            try:
                reply = await respond(frames, sock.send_multipart)
                if reply is not None:
                    await sock.send_multipart(reply)
            except Exception:
                log.exception("zmq reply failed", bind=bind)
            finally:
                slots.release()

        async with anyio.create_task_group() as replies:
            with anyio.CancelScope() as reading:
                replies.start_soon(_cancel_on, stop, reading)
                while True:
                    frames = await sock.recv_multipart()
                    await slots.acquire()
                    replies.start_soon(answer, frames)
            # Stopped reading: the replies task group now waits for what was accepted (bounded).
            replies.cancel_scope.deadline = anyio.current_time() + grace_s
    finally:
        sock.close(linger=0)
        context.destroy(linger=0)  # term() would block the loop


async def _cancel_on(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()
