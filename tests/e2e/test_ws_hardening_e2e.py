"""WebSocket hardening (issue 13, minor): a client that stopped reading cannot hold the daemon's drain
for the whole grace period: its replies and its closing handshake wait at most send_timeout_s."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import anyio
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.support.e2e import Start, echo, metric, problems_logged, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

GRACE_S = 30.0
SEND_TIMEOUT_S = 1.0
EXIT_WITHIN_S = 8.0  # generous for SEND_TIMEOUT_S; before, the close handshake alone waited 10 s
REPLIES = 200
TEXT = "a" * 100_000  # 200 replies of ~100 KB: far more than the socket buffers take


async def test_a_client_that_stopped_reading_does_not_hold_the_shutdown_for_the_grace_period(
        start_hostd: Start) -> None:
    server = start_hostd({"models": [echo()], "shutdown_grace_s": GRACE_S,
                          "transports": {"http": {}, "ws": {"send_timeout_s": SEND_TIMEOUT_S}}})

    def predicted() -> bool:
        return metric(server.url, 'hostd_requests_total{code="OK",model="echo",transport="ws"}') >= REPLIES

    port = server.transports["ws"]["port"]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel would buffer 32 MB otherwise
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    async with connect(f"ws://127.0.0.1:{port}", sock=sock, proxy=None, open_timeout=10, close_timeout=2) as ws:
        ws.transport.pause_reading()  # stops reading its socket (the frames it queued would hide this)
        for i in range(REPLIES):
            await ws.send(orjson.dumps({"id": i, "model": "echo", "data": {"x": 1, "text": TEXT}}).decode())
        # Every reply is made, and most wait for room in the client's socket.
        await anyio.to_thread.run_sync(wait_for, predicted, "the predictions were never all made")
        stopping = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = await anyio.to_thread.run_sync(server.proc.wait, EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"hostd still running {EXIT_WITHIN_S} s after SIGTERM (grace {GRACE_S} s): a client "
                        "that does not read holds the drain")
        took = time.monotonic() - stopping
    assert code == 0, server.output()[-2000:]
    print(f"\nexited {took:.1f} s after SIGTERM (grace {GRACE_S} s, send_timeout_s {SEND_TIMEOUT_S})")
    assert problems_logged(server.output()) == []


async def test_connections_over_max_connections_are_refused_at_the_handshake(start_hostd: Start) -> None:
    from websockets.exceptions import InvalidStatus

    server = await anyio.to_thread.run_sync(
        lambda: start_hostd({"models": [echo()], "transports": {"http": {}, "ws": {"max_connections": 3}}}))
    url = f"ws://127.0.0.1:{server.transports['ws']['port']}"
    request = orjson.dumps({"id": "1", "model": "echo", "data": {"x": 1}}).decode()
    opened = [await connect(url, open_timeout=10) for _ in range(3)]
    try:
        with pytest.raises(InvalidStatus) as caught:
            await connect(url, open_timeout=10)
        assert caught.value.response.status_code == 503
        assert b"max_connections" in caught.value.response.body
        await opened[0].send(request)  # those open keep working
        assert orjson.loads(await opened[0].recv())["prediction"]["y"] == 2.0
        await opened.pop().close()
        async with connect(url, open_timeout=10) as again:  # a place is free again
            await again.send(request)
            assert orjson.loads(await again.recv())["prediction"]["y"] == 2.0
    finally:
        for ws in opened:
            await ws.close()
