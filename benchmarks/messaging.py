"""Load generators for WebSocket and ZeroMQ that are not themselves the bottleneck.

Each connection is a plain blocking client in its own process: a raw-socket WebSocket client that
sends ready-made frames (no per-frame masking work: a zero mask key, which RFC 6455 allows, leaves the
payload as is) and a blocking pyzmq DEALER. A client keeps ``in_flight`` requests unanswered (1 =
strict request/reply), matches replies by id, times each round trip, and stops after ``count``
requests or ``seconds``, whichever comes first; the runs of all its processes add up to one Result.
"""

from __future__ import annotations

import base64
import multiprocessing
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import orjson
import zmq

from benchmarks.common import IRIS, Result, percentile

#: Round trips and timings of one client process: (answered, latencies in ms, errors, seconds taken).
Run = tuple[int, list[float], int, float]
REPLY_TIMEOUT_S = 30  # a reply slower than this ends the run with an error: the server is stuck


def request(i: int) -> bytes:
    return orjson.dumps({"id": i, "model": "iris_model", "data": IRIS})


def ws_load(url: str, count: int, in_flight: int, seconds: float, processes: int = 2) -> Result:
    return _load("ws", "raw-socket WebSocket client", _ws_client, url, count, in_flight, seconds, processes)


def zmq_load(url: str, count: int, in_flight: int, seconds: float, processes: int = 2) -> Result:
    return _load("zmq", "pyzmq DEALER", _zmq_client, url, count, in_flight, seconds, processes)


def _load(transport: str, tool: str, client: Callable[[str, int, int, float], Run], url: str, count: int,
          in_flight: int, seconds: float, processes: int) -> Result:
    """``processes`` clients at once (one when strict request/reply) sharing ``in_flight`` requests
    unanswered; requests/s is all the answers over the longest client's time."""
    processes = max(1, min(processes, in_flight))
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        runs = pool.starmap(client, [(url, count // processes, in_flight // processes, seconds)] * processes)
    latencies = sorted(ms for run in runs for ms in run[1])
    rps = sum(run[0] for run in runs) / max(run[3] for run in runs)
    return Result("hostd", transport, in_flight // processes * processes, rps, percentile(latencies, 0.5),
                  percentile(latencies, 0.99), sum(run[2] for run in runs), f"{tool} x{processes}")


def _pipeline(send: Callable[[bytes], None], replies: Callable[[], Iterator[bytes]], count: int,
              in_flight: int, seconds: float) -> Run:
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    errors = sent = received = 0
    started = time.perf_counter()
    deadline = started + seconds
    while received < sent or (sent < count and time.perf_counter() < deadline):
        while sent < count and sent - received < in_flight and time.perf_counter() < deadline:
            sent_at[sent] = time.perf_counter()
            send(request(sent))
            sent += 1
        for raw in replies():
            reply = orjson.loads(raw)
            latencies.append((time.perf_counter() - sent_at.pop(reply["id"])) * 1000)
            errors += "prediction" not in reply
            received += 1
    return received, latencies, errors, time.perf_counter() - started


def _zmq_client(url: str, count: int, in_flight: int, seconds: float) -> Run:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)  # a DEALER keeps many in flight; with one it is request/reply
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, REPLY_TIMEOUT_S * 1000)
    sock.connect(url)

    def replies() -> Iterator[bytes]:
        yield sock.recv()  # waits (RCVTIMEO: raises if the server is stuck)
        while True:
            try:
                yield sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    try:
        return _pipeline(sock.send, replies, count, in_flight, seconds)
    finally:
        sock.close(linger=0)
        context.destroy(linger=0)


def _ws_client(url: str, count: int, in_flight: int, seconds: float) -> Run:
    sock, buffer = _ws_connect(url)
    sock.settimeout(REPLY_TIMEOUT_S)
    unread = bytearray(buffer)

    def send(payload: bytes) -> None:
        sock.sendall(_ws_frame(payload))

    def replies() -> Iterator[bytes]:
        frames = list(_ws_frames(unread))
        while not frames:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the server closed the WebSocket")
            unread.extend(chunk)
            frames = list(_ws_frames(unread))
        yield from frames

    try:
        return _pipeline(send, replies, count, in_flight, seconds)
    finally:
        sock.close()


def _ws_connect(url: str) -> tuple[socket.socket, bytes]:
    """A WebSocket opened by hand: the HTTP upgrade, then the bytes read past its headers."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    sock = socket.create_connection((host, port), timeout=REPLY_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                 % ((parts.path or "/").encode(), host.encode(), port, key))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the server closed the connection during the WebSocket handshake")
        head += chunk
    head, rest = head.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"WebSocket handshake refused: {head.splitlines()[0].decode()}")
    return sock, rest


def _ws_frame(payload: bytes) -> bytes:
    """One masked text frame (FIN) with a zero mask key."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, 0x80 | size)) + b"\0\0\0\0" + payload
    if size < 1 << 16:
        return b"\x81\xfe" + struct.pack(">H", size) + b"\0\0\0\0" + payload
    return b"\x81\xff" + struct.pack(">Q", size) + b"\0\0\0\0" + payload


def _ws_frames(buffer: bytearray) -> Iterator[bytes]:
    """The whole text frames at the start of ``buffer`` (removed from it); control frames skipped."""
    offset = 0
    while len(buffer) - offset >= 2:
        opcode, size, start = buffer[offset] & 0x0F, buffer[offset + 1] & 0x7F, offset + 2
        if size == 126:
            if len(buffer) - offset < 4:
                break
            size, start = struct.unpack_from(">H", buffer, offset + 2)[0], offset + 4
        elif size == 127:
            if len(buffer) - offset < 10:
                break
            size, start = struct.unpack_from(">Q", buffer, offset + 2)[0], offset + 10
        if len(buffer) < start + size:
            break
        if opcode == 0x1:  # server frames are not masked
            yield bytes(buffer[start:start + size])
        offset = start + size
    del buffer[:offset]
