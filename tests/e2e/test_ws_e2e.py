"""hostd run, served over WebSocket: the JSON envelope with the websockets client, many requests in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from sklearn.datasets import load_digits
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK

from tests.conftest import HostdProcess
from tests.support.e2e import (
    IRIS_FIELDS,
    PATIENCE_S,
    REAL_MODELS,
    SPECIES,
    Start,
    diabetes_payload,
    echo,
    iris_payload,
    metric,
    pending,
    problems_logged,
    refused,
    rss_kb,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


class Served:
    """A running hostd with a WebSocket endpoint."""

    def __init__(self, server: HostdProcess) -> None:
        self.server = server
        self.ws_port = int(server.transports["ws"]["port"])
        self.ws_url = f"ws://127.0.0.1:{self.ws_port}"

    @property
    def pid(self) -> int:
        return int(self.server.proc.pid)

    def connect(self, **options: Any) -> connect:
        options = {"open_timeout": 10, "close_timeout": 2, "proxy": None, **options}
        return connect(self.ws_url, **options)

    def pending(self) -> float:
        return pending(self.server.url)


def serve(start_hostd: Start, models: list[dict[str, Any]], grace_s: float = 10, **ws: Any) -> Served:
    return Served(start_hostd({"models": models, "transports": {"http": {}, "ws": ws}, "shutdown_grace_s": grace_s}))


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """wait_for, off the event loop (the condition asks /metrics, blocking)."""
    await anyio.to_thread.run_sync(wait_for, condition, what)


def predicted(served: Served) -> float:
    """Predictions the echo model has made for WebSocket clients."""
    return metric(served.server.url, 'hostd_requests_total{code="OK",model="echo",transport="ws"}')


async def steady(read: Callable[[], float], what: str) -> None:
    """Wait until ``read()`` gives the same value twice in a row, a quarter of a second apart."""
    previous = None
    deadline = time.monotonic() + PATIENCE_S
    while (current := await anyio.to_thread.run_sync(read)) != previous:
        assert time.monotonic() < deadline, what
        previous = current
        await anyio.sleep(0.25)


async def recv_json(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        frame = await ws.recv()
    assert isinstance(frame, str), "replies are text frames"
    reply: dict[str, Any] = orjson.loads(frame)
    return reply


async def ask(ws: ClientConnection, message: dict[str, Any] | str | bytes, timeout: float = 10) -> dict[str, Any]:
    await ws.send(message if isinstance(message, str | bytes) else orjson.dumps(message).decode())
    return await recv_json(ws, timeout)


async def closed_with(ws: ClientConnection, timeout: float = 10) -> ConnectionClosed:
    """Read until the server closes the connection; return how it closed."""
    with anyio.fail_after(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as closed:
            return closed


# -- predictions and ops ---------------------------------------------------------------------------------


async def test_every_model_predicts_over_websocket(start_hostd: Start) -> None:
    served = serve(start_hostd, REAL_MODELS)
    digits = load_digits()
    async with served.connect() as ws:
        for index, species in SPECIES.items():
            reply = await ask(ws, {"id": f"iris-{index}", "model": "iris_model", "data": iris_payload(index)})
            assert reply == {"id": f"iris-{index}", "model": "iris_model", "version": "1.0.0",
                             "prediction": {"species": species}}
        for index in (0, 3, 7):
            image = digits.images[index].astype(int).tolist()
            reply = await ask(ws, {"id": f"digit-{index}", "model": "digits_model", "data": {"image": image}})
            assert reply["id"] == f"digit-{index}" and reply["model"] == "digits_model"
            assert reply["prediction"]["digit"] == digits.target[index]
            assert 0 < reply["prediction"]["probability"] <= 1
        reply = await ask(ws, {"id": "d", "model": "diabetes_model", "version": None, "data": diabetes_payload(0)})
        assert (reply["id"], reply["model"]) == ("d", "diabetes_model")
        prediction = reply["prediction"]
        assert set(prediction) == {"progression", "std", "sample"}
        assert 25 <= prediction["progression"] <= 346 and prediction["std"] > 0


async def test_models_and_metadata_ops_describe_the_models(start_hostd: Start) -> None:
    served = serve(start_hostd, REAL_MODELS)
    async with served.connect() as ws:
        reply = await ask(ws, {"id": "m", "op": "models"})
        assert reply["id"] == "m"
        listed = [(m["qualified_name"], m["version"], m["deterministic"]) for m in reply["models"]]
        assert listed == [("diabetes_model", "1.0.0", False), ("digits_model", "1.0.0", True),
                          ("iris_model", "1.0.0", True)]
        assert all(m["display_name"] and m["description"] for m in reply["models"])

        reply = await ask(ws, {"id": "md", "op": "metadata", "model": "iris_model"})
        metadata = reply["metadata"]
        assert reply["id"] == "md" and metadata["qualified_name"] == "iris_model"
        assert metadata["input_schema"]["required"] == IRIS_FIELDS
        assert metadata["output_schema"]["required"] == ["species"]
        digits = (await ask(ws, {"op": "metadata", "model": "digits_model", "version": "1.0.0"}))["metadata"]
        assert digits["input_schema"]["required"] == ["image"]

        reply = await ask(ws, {"id": "x", "op": "metadata", "model": "lily_model"})
        assert reply["id"] == "x" and reply["error"]["code"] == "MODEL_NOT_FOUND"
        assert "lily_model" in reply["error"]["message"]


async def test_a_request_without_an_id_gets_one(start_hostd: Start) -> None:
    served = serve(start_hostd, [echo()])
    async with served.connect() as ws:
        first = await ask(ws, {"model": "echo", "data": {"x": 1}})
        second = await ask(ws, {"id": None, "model": "echo", "data": {"x": 2}})
    assert isinstance(first["id"], str) and len(first["id"]) >= 16
    assert isinstance(second["id"], str) and first["id"] != second["id"]
    assert (first["prediction"]["y"], second["prediction"]["y"]) == (2.0, 4.0)


async def test_200_requests_in_flight_on_one_connection_are_all_answered_by_id(start_hostd: Start,
                                                                                tmp_path: Path) -> None:
    # Batching off (a batch lasts as long as its slowest row), and more workers than held requests:
    # this test is about replies overtaking requests held in the model, matched by id.
    served = serve(start_hostd, [echo(workers=32, batching={"max_batch_size": 1})])
    count, gate = 200, tmp_path / "gate"
    held = {f"r{i}" for i in range(0, count, 10)}  # every tenth waits for the gate
    async with served.connect() as ws:
        for i in range(count):
            data = {"x": i, "text": f"t{i}", "gate": str(gate) if f"r{i}" in held else ""}
            await ws.send(orjson.dumps({"id": f"r{i}", "model": "echo", "data": data}).decode())
        overtaking = [await recv_json(ws, timeout=30) for _ in range(count - len(held))]
        gate.touch()
        released = [await recv_json(ws, timeout=30) for _ in held]
    assert {reply["id"] for reply in overtaking} == {f"r{i}" for i in range(count)} - held
    assert {reply["id"] for reply in released} == held, "every request answered exactly once"
    for reply in overtaking + released:
        i = int(reply["id"][1:])
        assert reply["prediction"] == {"y": 2.0 * i, "text": f"T{i}"}, reply


async def test_200_pipelined_predictions_of_the_real_models_are_matched_by_id(start_hostd: Start) -> None:
    served = serve(start_hostd, REAL_MODELS)
    digits = load_digits()
    expected: dict[str, dict[str, Any]] = {}
    async with served.connect() as ws:
        for i in range(200):
            if i % 2:
                index = list(SPECIES)[i % 3]
                request = {"id": i, "model": "iris_model", "data": iris_payload(index)}
                expected[str(i)] = {"species": SPECIES[index]}
            else:
                request = {"id": i, "model": "digits_model", "data": {"image": digits.images[i].astype(int).tolist()}}
                expected[str(i)] = {"digit": int(digits.target[i])}
            await ws.send(orjson.dumps(request).decode())
        replies = {str(reply["id"]): reply for reply in [await recv_json(ws, timeout=30) for _ in range(200)]}
    assert set(replies) == set(expected)
    for key, want in expected.items():
        got = replies[key]["prediction"]
        assert {name: got[name] for name in want} == want, (key, got)


async def test_a_small_in_flight_limit_still_answers_everything(start_hostd: Start) -> None:
    served = serve(start_hostd, [echo(workers=16)], max_in_flight=4)
    async with served.connect() as ws:
        for i in range(100):
            await ws.send(orjson.dumps({"id": i, "model": "echo", "data": {"x": i, "delay_ms": 5}}).decode())
        replies = [await recv_json(ws, timeout=20) for _ in range(100)]
    assert sorted((reply["id"], reply["prediction"]["y"]) for reply in replies) == [(i, 2.0 * i) for i in range(100)]


# -- bad frames ------------------------------------------------------------------------------------------


async def test_bad_frames_get_error_replies_and_the_connection_stays_open(start_hostd: Start) -> None:
    served = serve(start_hostd, [*REAL_MODELS[:1], echo()])
    good = iris_payload(0)
    cases: list[tuple[str, str | bytes, Any, str, list[str]]] = [
        ("not JSON", "sepal_length=5.1", None, "INVALID_INPUT", ["not valid JSON"]),
        ("truncated JSON", '{"id": "t", "model": "iris_model", "data": {', None, "INVALID_INPUT", ["JSON"]),
        ("binary garbage", b"\xff\xfe\x00\x81garbage\x00", None, "INVALID_INPUT", ["binary"]),
        ("not an object", "[1, 2, 3]", None, "INVALID_INPUT", ["JSON object"]),
        ("missing model", orjson.dumps({"id": "a", "data": good}).decode(), "a", "INVALID_INPUT", ["'model'"]),
        ("missing data", orjson.dumps({"id": "b", "model": "iris_model"}).decode(), "b", "INVALID_INPUT",
         ["'data'"]),
        ("version not a string", orjson.dumps({"id": "c", "model": "iris_model", "version": 1, "data": good})
         .decode(), "c", "INVALID_INPUT", ["'version'"]),
        ("unknown op", orjson.dumps({"id": "d", "op": "fit", "model": "iris_model"}).decode(), "d",
         "INVALID_INPUT", ["unknown op 'fit'"]),
        ("unknown model", orjson.dumps({"id": "e", "model": "lily_model", "data": good}).decode(), "e",
         "MODEL_NOT_FOUND", ["lily_model"]),
        ("unknown version", orjson.dumps({"id": "f", "model": "iris_model", "version": "9.9.9", "data": good})
         .decode(), "f", "MODEL_NOT_FOUND", ["9.9.9"]),
        ("wrong type", orjson.dumps({"id": "g", "model": "iris_model", "data": {**good, "sepal_width": "wide"}})
         .decode(), "g", "INVALID_INPUT", ["sepal_width"]),
        ("missing field", orjson.dumps({"id": "h", "model": "iris_model",
                                        "data": {k: v for k, v in good.items() if k != "petal_width"}}).decode(),
         "h", "INVALID_INPUT", ["petal_width", "Field required"]),
        ("out of bounds", orjson.dumps({"id": "i", "model": "iris_model", "data": {**good, "petal_length": 70}})
         .decode(), "i", "INVALID_INPUT", ["petal_length"]),
        ("extra field", orjson.dumps({"id": "j", "model": "iris_model", "data": {**good, "colour": "blue"}})
         .decode(), "j", "INVALID_INPUT", ["colour"]),
        ("data not an object", orjson.dumps({"id": "k", "model": "iris_model", "data": [5.1, 3.5, 1.4, 0.2]})
         .decode(), "k", "INVALID_INPUT", ["iris_model"]),
        ("model raises", orjson.dumps({"id": "l", "model": "echo", "data": {"x": 1, "fail": True}}).decode(), "l",
         "MODEL_ERROR", ["echo", "asked to fail"]),
    ]
    async with served.connect() as ws:
        for name, frame, request_id, code, words in cases:
            reply = await ask(ws, frame)
            assert set(reply) == {"id", "error"}, f"{name}: {reply}"
            assert reply["error"]["code"] == code, f"{name}: {reply}"
            assert all(word in reply["error"]["message"] for word in words), f"{name}: {reply}"
            assert reply["id"] == request_id, name
            after = await ask(ws, {"id": "ok", "model": "iris_model", "data": good})
            assert after["prediction"] == {"species": "Iris setosa"}, name
        schema = await ask(ws, {"id": "s", "model": "iris_model", "data": {**good, "sepal_length": 50}})
        assert schema["error"]["details"][0]["field"] == "sepal_length"
        # A well-formed request in a binary frame is answered like a text one.
        reply = await ask(ws, orjson.dumps({"id": "bin", "model": "iris_model", "data": iris_payload(100)}))
        assert reply["prediction"] == {"species": "Iris virginica"}
    assert served.server.proc.poll() is None


async def test_a_frame_over_the_limit_closes_the_connection_with_1009(start_hostd: Start) -> None:
    served = serve(start_hostd, [echo()], max_message_bytes=2048)
    async with served.connect() as bystander, served.connect(max_size=None) as ws:
        assert (await ask(ws, {"id": 1, "model": "echo", "data": {"x": 1, "text": "a" * 1900}}))["prediction"]["y"] == 2
        await ws.send(orjson.dumps({"id": 2, "model": "echo", "data": {"x": 1, "text": "a" * 10_000}}).decode())
        closed = await closed_with(ws)
        assert isinstance(closed, ConnectionClosedError)
        assert closed.rcvd is not None and closed.rcvd.code == 1009, closed
        # Only that connection is closed.
        assert (await ask(bystander, {"id": 3, "model": "echo", "data": {"x": 4}}))["prediction"]["y"] == 8
    async with served.connect() as fresh:
        assert (await ask(fresh, {"id": 4, "model": "echo", "data": {"x": 5}}))["prediction"]["y"] == 10


# -- keepalive and idle timeout --------------------------------------------------------------------------


async def test_an_idle_connection_is_closed_after_idle_timeout(start_hostd: Start, tmp_path: Path) -> None:
    idle_timeout = 1.0
    served = serve(start_hostd, [echo()], idle_timeout_s=idle_timeout)
    idle_closed: list[tuple[float, ConnectionClosed]] = []
    idle_gone = anyio.Event()
    started = time.monotonic()  # before the server's clock for `idle` starts

    async def watch(ws: ClientConnection) -> None:
        closed = await closed_with(ws, timeout=30)
        idle_closed.append((time.monotonic() - started, closed))
        idle_gone.set()

    async with served.connect() as idle, served.connect() as busy, anyio.create_task_group() as tg:
        tg.start_soon(watch, idle)
        # The busy client sends a frame every 0.2 s, for longer than the timeout: never idle for as
        # long as the timeout, so never closed (the pauses are the client's behaviour under test).
        for i in range(8):
            assert (await ask(busy, {"id": i, "model": "echo", "data": {"x": i}}))["prediction"]["y"] == 2 * i
            await anyio.sleep(0.2)
        with anyio.fail_after(30):  # a hang guard
            await idle_gone.wait()
        [(after, closed)] = idle_closed
        assert isinstance(closed, ConnectionClosedOK)
        assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (1000, "idle timeout")
        assert after >= idle_timeout, "closed before the idle timeout"
        # A reply still in the model when the timeout strikes is delivered before the close: the
        # client stays silent for longer than the timeout (the behaviour under test), then the gate opens.
        gate = tmp_path / "gate"
        await busy.send(orjson.dumps({"id": "held", "model": "echo", "data": {"x": 3, "gate": str(gate)}}).decode())
        await anyio.sleep(2 * idle_timeout)
        gate.touch()
        reply = await recv_json(busy, timeout=30)
        assert (reply["id"], reply["prediction"]["y"]) == ("held", 6)
        closed = await closed_with(busy, timeout=30)
        assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (1000, "idle timeout")


async def test_keepalive_pings_drop_a_dead_peer_and_keep_a_live_one(start_hostd: Start) -> None:
    # A pong is due within 1 s of each ping (every 0.3 s): room for a loaded machine's live client.
    served = serve(start_hostd, [echo()], ping_interval_s=0.3, ping_timeout_s=1.0)
    # The client sends no pings of its own: only the server's pings are in play.
    async with served.connect(ping_interval=None) as live, served.connect(ping_interval=None) as dead:
        with anyio.fail_after(10):
            await (await live.ping())  # the server answers a client's ping with a pong
        # A peer that stops reading never answers the server's pings: the server drops it. It stays
        # silent for well over ping_interval + ping_timeout (that silence is the behaviour under test).
        dead.transport.pause_reading()
        await anyio.sleep(3)
        assert (await ask(live, {"id": 1, "model": "echo", "data": {"x": 1}}))["prediction"]["y"] == 2
        dead.transport.resume_reading()
        closed = await closed_with(dead, timeout=10)
        assert isinstance(closed, ConnectionClosedError)
        assert closed.rcvd is not None and closed.rcvd.code == 1011 and "ping" in closed.rcvd.reason, closed


# -- backpressure, disconnects, shutdown -----------------------------------------------------------------


async def test_a_client_that_stops_reading_does_not_make_the_daemon_buffer_without_bound(
        start_hostd: Start, record_property: Callable[[str, object], None]) -> None:
    served = serve(start_hostd, [echo(workers=4)])
    text = os.urandom(16_000).hex()  # each request and each reply is ~32 KB
    async with served.connect() as warm:
        for i in range(300):  # warm the code paths and allocator before the baseline
            await warm.send(orjson.dumps({"id": i, "model": "echo", "data": {"x": 1, "text": text}}).decode())
        for _ in range(300):
            await recv_json(warm)
    baseline = rss_kb(served.pid)
    peak = baseline
    sent: list[int] = []
    # Uncompressed, so the bytes on the wire are the bytes the daemon would have to hold.
    async with served.connect(max_queue=4, compression=None) as reader_stopped:
        started = time.monotonic()
        # Send 5,000 requests (160 MB) without reading a reply; stop once sending has stalled for 2 s.
        with anyio.move_on_after(20):
            for i in range(5000):
                with anyio.move_on_after(2) as stalled:
                    await reader_stopped.send(orjson.dumps({"id": i, "model": "echo",
                                                            "data": {"x": i, "text": text}}).decode())
                if stalled.cancelled_caught:
                    break
                sent.append(i)
                if i % 100 == 0:
                    peak = max(peak, rss_kb(served.pid))
        await steady(lambda: predicted(served), "the daemon never stopped taking the stalled client's requests")
        peak = max(peak, rss_kb(served.pid))
        growth_mb = (peak - baseline) / 1024
        record_property("ws_rss", {"baseline_mb": baseline / 1024, "peak_mb": peak / 1024, "sent": len(sent),
                                   "seconds": time.monotonic() - started})
        print(f"\nws backpressure: baseline {baseline / 1024:.1f} MB, peak {peak / 1024:.1f} MB, "
              f"growth {growth_mb:.1f} MB, requests sent before the stall {len(sent)}")
        assert len(sent) < 5000, "the daemon read all 160 MB of requests from a client that reads nothing"
        assert growth_mb < 100, f"hostd grew by {growth_mb:.0f} MB for one client that stopped reading"

        async with served.connect() as other:  # served while the stalled client still holds its replies up
            reply = await ask(other, {"id": "other", "model": "echo", "data": {"x": 21}}, timeout=30)
            assert reply["prediction"]["y"] == 42

        # Nothing the stalled client sent was lost: once it reads, every request is answered by id.
        answered: set[int] = set()
        with anyio.fail_after(30):
            while not set(sent) <= answered:
                reply = await recv_json(reader_stopped)
                assert reply["prediction"]["y"] == 2.0 * reply["id"]
                answered.add(reply["id"])
    assert served.server.proc.poll() is None
    assert problems_logged(served.server.output()) == []


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_a_client_leaving_mid_request_does_not_disturb_the_others(start_hostd: Start, tmp_path: Path,
                                                                        how: str) -> None:
    served = serve(start_hostd, [echo(workers=16)])
    gate = tmp_path / "gate"  # the leaver's requests stay in the model until the test creates it
    async with served.connect() as other, served.connect() as leaver:
        for i in range(10):
            await leaver.send(orjson.dumps({"id": i, "model": "echo", "data": {"x": i, "gate": str(gate)}}).decode())
        await wait_until(lambda: served.pending() >= 10, "the leaver's requests never reached the model")
        if how == "close":
            await leaver.close()
        else:
            leaver.transport.abort()
        # The others are served while the leaver's requests are still in the model.
        for i in range(20):
            assert (await ask(other, {"id": i, "model": "echo", "data": {"x": i}}))["prediction"]["y"] == 2 * i
        assert served.pending() == 0, "the leaver's requests were not cancelled when it left"
        gate.touch()  # frees the model's workers they held
        assert (await ask(other, {"id": "after", "model": "echo", "data": {"x": 1}}))["prediction"]["y"] == 2
    async with served.connect() as fresh:
        assert (await ask(fresh, {"model": "echo", "data": {"x": 3}}))["prediction"]["y"] == 6
    assert predicted(served) == 22, "the leaver's requests were cancelled, not answered"
    assert served.server.proc.poll() is None
    assert problems_logged(served.server.output()) == []


async def test_sigterm_answers_every_request_in_flight_then_closes_with_1001_and_exits_0(
        start_hostd: Start, tmp_path: Path) -> None:
    served = serve(start_hostd, [echo(workers=32)])
    count = 20
    gate = tmp_path / "gate"  # the requests stay in the model until the test creates it
    async with served.connect() as ws, served.connect() as idle:
        for i in range(count):
            await ws.send(orjson.dumps({"id": f"s{i}", "model": "echo", "data": {"x": i, "gate": str(gate)}}).decode())
        await wait_until(lambda: served.pending() >= count, "the requests never reached the model")
        served.server.proc.send_signal(signal.SIGTERM)
        # Draining: new connections are refused while the accepted requests are still in the model.
        await wait_until(lambda: refused(served.ws_port), "still accepting WebSocket connections after SIGTERM")
        gate.touch()
        replies = [await recv_json(ws, timeout=30) for _ in range(count)]
        assert sorted((r["id"], r["prediction"]["y"]) for r in replies) == sorted(
            (f"s{i}", 2.0 * i) for i in range(count))
        for connection in (ws, idle):
            closed = await closed_with(connection, timeout=30)
            assert isinstance(closed, ConnectionClosedOK)
            assert closed.rcvd is not None and closed.rcvd.code == 1001, closed
    assert await anyio.to_thread.run_sync(served.server.proc.wait, 15) == 0
    assert problems_logged(served.server.output()) == []


async def test_sigterm_with_a_client_that_stopped_reading_still_exits_after_the_grace_period(
        start_hostd: Start) -> None:
    served = serve(start_hostd, [echo(workers=4)], grace_s=2)
    server = served.server
    text = os.urandom(16_000).hex()
    async with served.connect(max_queue=4, compression=None) as stuck:
        try:
            # Fill every buffer between the daemon and a client that reads nothing.
            with anyio.move_on_after(15):
                for i in range(5000):
                    with anyio.move_on_after(2) as stalled:
                        await stuck.send(orjson.dumps({"id": i, "model": "echo", "data": {"x": 1, "text": text}})
                                         .decode())
                    if stalled.cancelled_caught:
                        break
            assert i < 4999, "sending never stalled"
            server.proc.send_signal(signal.SIGTERM)
            # Its replies cannot be delivered; past shutdown_grace_s the daemon gives up on them and
            # exits (within 30 s: a hang guard, not a measure).
            try:
                code = await anyio.to_thread.run_sync(server.proc.wait, 30)
            except subprocess.TimeoutExpired:
                code = None
            assert code == 0, ("hostd still running 30 s after SIGTERM (shutdown_grace_s: 2); last log lines:\n"
                               + "\n".join(server.output().splitlines()[-3:]))
        finally:
            stuck.transport.abort()


async def test_many_connections_at_once_are_each_answered(start_hostd: Start) -> None:
    served = serve(start_hostd, [echo(workers=16)])

    async def client(n: int) -> list[tuple[str, float]]:
        async with served.connect() as ws:
            for i in range(10):
                await ws.send(orjson.dumps({"id": f"{n}-{i}", "model": "echo", "data": {"x": n * 10 + i}}).decode())
            replies = [await recv_json(ws) for _ in range(10)]
            assert all("prediction" in r for r in replies), replies
            return sorted((r["id"], r["prediction"]["y"]) for r in replies)

    results = await asyncio.gather(*(client(n) for n in range(30)))
    for n, replies in enumerate(results):
        assert replies == sorted((f"{n}-{i}", 2.0 * (n * 10 + i)) for i in range(10))
