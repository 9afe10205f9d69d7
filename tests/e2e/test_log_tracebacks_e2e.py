"""Every line hostd's process writes is one JSON object, whatever goes wrong: a model's library that
warns, raises in a thread of its own or in a ``__del__`` (Python printed those raw, over several
lines), an HTTP/2 client that breaks hypercorn's rules, an arq job that fails."""

from __future__ import annotations

import socket
import threading
import warnings
from typing import Any

import anyio
import h2.config
import h2.connection
import httpx
import orjson
import pytest

from tests.e2e.brokers import StartRedis, finished
from tests.e2e.test_arq_e2e import QUEUE, client, enqueue
from tests.support.e2e import Start, echo
from tests.support.toy import EchoInput, EchoModel, EchoOutput

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


class _FailsInDel:
    def __del__(self) -> None:
        raise RuntimeError("closing the native handle failed")


def _fails_in_thread() -> None:
    raise RuntimeError("the loader thread failed")


class NoisyModel(EchoModel):
    """Echo, doing what libraries under a model do: ``text`` says which."""

    def predict(self, data: EchoInput) -> EchoOutput:
        if data.text == "warn":  # e.g. scikit-learn's "X does not have valid feature names"
            warnings.warn("X does not have valid feature names", UserWarning, stacklevel=1)
        elif data.text == "thread":
            thread = threading.Thread(target=_fails_in_thread, name="loader")
            thread.start()
            thread.join()
        elif data.text == "unraisable":
            _FailsInDel()  # collected at once: its __del__ raises where nothing can catch it
        return super().predict(data)


def h2_abuse(port: int) -> None:
    """An HTTP/2 client that sends a body after hypercorn has answered its stream (an upstream
    KeyError in hypercorn), then more streams than it allows (h2's TooManyStreamsError)."""
    headers = [(":method", "POST"), (":path", "/api/models/nope/prediction"), (":scheme", "http"),
               (":authority", "hostd"), ("content-type", "application/json")]
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        conn.initiate_connection()
        conn.send_headers(1, headers)
        sock.sendall(conn.data_to_send())
        conn.receive_data(sock.recv(65536))  # the settings; the 404 follows
        httpx.get(f"http://127.0.0.1:{port}/api/health/ready", timeout=5)  # a moment for the 404
        conn.send_data(1, b'{"x": 1}', end_stream=True)
        sock.sendall(conn.data_to_send())
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        for stream in range(1, 2 * 150, 2):
            conn.max_outbound_streams = 1000  # the client side of h2 would refuse too
            conn.send_headers(stream, headers)
            sock.sendall(conn.data_to_send())
        try:
            while sock.recv(65536):  # until hypercorn closes the connection
                pass
        except OSError:
            pass


def json_lines(output: str) -> list[dict[str, Any]]:
    lines = []
    for line in output.splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}\n{output[-6000:]}") from None
        assert isinstance(record, dict), line
        lines.append(record)
    return lines


@pytest.mark.timeout(120)
async def test_every_line_is_json_whatever_goes_wrong(start_redis: StartRedis, start_hostd: Start) -> None:
    redis = start_redis()
    arq = {"redis_url": redis.url, "queue_name": QUEUE, "retry_backoff_s": 0.2}
    models = [echo(), {"class_path": "tests.e2e.test_log_tracebacks_e2e:NoisyModel",
                       "configuration": {"name": "noisy"}}]
    transports = {"http": {"server": "hypercorn"}, "arq": arq}  # h2_abuse speaks HTTP/2
    server = await anyio.to_thread.run_sync(lambda: start_hostd({"models": models, "transports": transports}))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for text in ("warn", "thread", "unraisable"):
            response = await http.post("/api/models/noisy/prediction", json={"x": 1, "text": text})
            assert response.status_code == 200, response.text
    await anyio.to_thread.run_sync(h2_abuse, server.port)
    async with client(redis) as pool:
        assert (await finished(await enqueue(pool, "echo", {"x": 1, "fail": True}))).success is False
        assert (await finished(await pool.enqueue_job("predict", _queue_name=QUEUE))).success is False
    assert await anyio.to_thread.run_sync(server.stop) == 0

    lines = json_lines(server.output())
    events = [str(line["event"]) for line in lines]
    assert any("X does not have valid feature names" in event for event in events), events
    thread = [line for line in lines if line["event"] == "uncaught exception in a thread"]
    assert [(line["thread"], "the loader thread failed" in line["exception"]) for line in thread] == \
        [("loader", True)]
    ignored = [line for line in lines if "closing the native handle failed" in line.get("exception", "")]
    assert len(ignored) == 1 and "_FailsInDel" in ignored[0]["event"] + ignored[0]["object"]
    failed = [line for line in lines if line.get("logger") == "arq.worker" and " failed, " in line["event"]]
    assert len(failed) == 2 and all("Traceback" in line["exception"] for line in failed)
