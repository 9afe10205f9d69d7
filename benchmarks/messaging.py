"""Our own small asyncio clients for WebSocket and ZeroMQ: keep N requests in flight (1 = strict
request/reply), match replies by id, time each round trip. Bounded by count and by time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson
import websockets
import zmq
import zmq.asyncio

from benchmarks.common import IRIS, Result, percentile

Send = Callable[[bytes], Awaitable[object]]
Receive = Callable[[], Awaitable[bytes]]


def request(i: int) -> bytes:
    return orjson.dumps({"id": i, "model": "iris_model", "data": IRIS})


async def pipeline(send: Send, receive: Receive, count: int, in_flight: int,
                   seconds: float) -> tuple[float, list[float], int]:
    """Send ``count`` requests keeping ``in_flight`` unanswered; stop early after ``seconds``.
    Returns (round trips/s, sorted latencies in ms, errors)."""
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    errors = sent = received = 0
    started = time.perf_counter()
    deadline = started + seconds
    while received < sent or (sent < count and time.perf_counter() < deadline):
        while sent < count and sent - received < in_flight and time.perf_counter() < deadline:
            sent_at[sent] = time.perf_counter()
            await send(request(sent))
            sent += 1
        reply = orjson.loads(await asyncio.wait_for(receive(), timeout=30))
        latencies.append((time.perf_counter() - sent_at.pop(reply["id"])) * 1000)
        errors += "prediction" not in reply
        received += 1
    return received / (time.perf_counter() - started), sorted(latencies), errors


async def ws_load(url: str, count: int, in_flight: int, seconds: float) -> Result:
    async with websockets.connect(url, max_queue=None) as ws:
        rps, latencies, errors = await pipeline(lambda data: ws.send(data, text=True), ws.recv, count, in_flight,
                                                seconds)
    return Result("hostd", "ws", in_flight, rps, percentile(latencies, 0.5), percentile(latencies, 0.99), errors,
                  "websockets client")


async def zmq_load(url: str, count: int, in_flight: int, seconds: float) -> Result:
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.REQ if in_flight == 1 else zmq.DEALER)  # a DEALER keeps many in flight
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)

    async def receive() -> bytes:
        return (await sock.recv_multipart())[-1]

    try:
        rps, latencies, errors = await pipeline(sock.send, receive, count, in_flight, seconds)
    finally:
        sock.close(linger=0)
        context.destroy(linger=0)
    return Result("hostd", "zmq", in_flight, rps, percentile(latencies, 0.5), percentile(latencies, 0.99), errors,
                  "pyzmq client")
