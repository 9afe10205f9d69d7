"""Round trips per second over WebSocket and ZeroMQ: one strict request/reply client, and one
pipelined client keeping N requests in flight (our own small asyncio clients; bounded by count).

    python -m benchmarks.messaging [--requests 5000] [--in-flight 100]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson
import websockets
import zmq
import zmq.asyncio

from benchmarks.oip_infer import IRIS, free_port, start_hostd_with

Exchange = Callable[[int, int], Awaitable[float]]


def request(i: int) -> bytes:
    return orjson.dumps({"id": i, "model": "iris_model", "data": IRIS})


async def ws_run(url: str, count: int, in_flight: int) -> float:
    async with websockets.connect(url, max_queue=None) as ws:
        started, sent, received = time.perf_counter(), 0, 0
        while received < count:
            while sent < count and sent - received < in_flight:
                await ws.send(request(sent), text=True)
                sent += 1
            reply = orjson.loads(await ws.recv())
            assert "prediction" in reply, reply
            received += 1
        return count / (time.perf_counter() - started)


async def zmq_run(url: str, count: int, in_flight: int) -> float:
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.REQ if in_flight == 1 else zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    try:
        started, sent, received = time.perf_counter(), 0, 0
        while received < count:
            while sent < count and sent - received < in_flight:
                await sock.send(request(sent))
                sent += 1
            reply = orjson.loads((await sock.recv_multipart())[-1])
            assert "prediction" in reply, reply
            received += 1
        return count / (time.perf_counter() - started)
    finally:
        sock.close(linger=0)
        context.destroy(linger=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=100)
    args = parser.parse_args()
    ws_port, zmq_port = free_port(), free_port()
    transports = {"ws": {"port": ws_port}, "zmq": {"bind": f"tcp://127.0.0.1:{zmq_port}", "zerorpc_bind": None}}
    with start_hostd_with(transports):
        for name, run, url in (("WebSocket", ws_run, f"ws://127.0.0.1:{ws_port}"),
                               ("ZeroMQ", zmq_run, f"tcp://127.0.0.1:{zmq_port}")):
            strict = asyncio.run(run(url, min(args.requests, 2000), 1))
            pipelined = asyncio.run(run(url, args.requests, args.in_flight))
            print(f"{name:10} strict (1 in flight): {strict:8.0f} round trips/s   "
                  f"pipelined ({args.in_flight} in flight): {pipelined:8.0f} round trips/s")


if __name__ == "__main__":
    main()
