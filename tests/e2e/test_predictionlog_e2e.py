"""hostd run with the prediction log and ground-truth feedback, over real sockets and brokers.

What a user checks: every request that reached the data plane, on every transport, errors included, has
exactly one record, joinable by request id to what its client received (JSONL files, or a Kafka topic);
a dead sink costs requests nothing; every reply carries the request id the log and feedback know; and
labels sent back by request id give the live quality (/api/quality, /metrics) that the clients'
predictions imply.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgpack
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
import zmq
import zmq.asyncio
from aiokafka import AIOKafkaConsumer
from arq import create_pool
from arq.connections import RedisSettings
from hostd_arq.serializer import deserialize_errors, serialize
from sklearn.datasets import load_diabetes
from tritonclient.utils import InferenceServerException
from websockets.asyncio.client import connect

from tests.conftest import HostdProcess, free_port
from tests.e2e.brokers import Reader, StartRedis, StartTansu, Topics, create_topics, finished, produce
from tests.support.e2e import (
    IRIS_ROWS,
    PATIENCE_S,
    SPECIES,
    Start,
    diabetes_payload,
    echo,
    iris_payload,
    logged,
    metric,
    until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

IRIS = {"class_path": "iris_model.model:IrisModel"}
DIABETES = {"class_path": "diabetes_model.model:DiabetesModel"}
#: Room for every request the tests keep in flight at once (pipelined WebSocket and ZeroMQ, a Kafka
#: batch, hundreds of HTTP connections): an OVERLOADED answer would be logged and joinable too, but
#: each request's outcome should be the one its input asks for.
ROOMY = {"max_pending": 8192}
#: hostd drops a reply to a ZeroMQ peer whose queue holds high_water_mark of them (a peer that does not read).
#: The test's client pipelines 3,000 requests, and on a loaded 2-core machine its socket's I/O thread may fall
#: behind: CI saw a reply dropped with the default of 1,000. Room for all of them, as the README advises.
ROOMY_ZMQ = {"high_water_mark": 10_000}
MADE_UP = re.compile(r"[0-9a-f]{32}")  # an id hostd makes up for a request that came without one
LOG_FILE = re.compile(r"predictions-\d{8}T\d{6}-\d+\.jsonl")
UNKNOWN = "lily_model"  # a model no hostd here serves
LOG_TOPIC = "hostd.prediction-log"  # the Kafka sink's default topic
#: The IRIS_ROWS' measurements (iris_payload loads the data set each time: too slow for 10,000 requests).
IRIS_INPUTS = {index: iris_payload(index) for index in IRIS_ROWS}


# -- what the clients sent and received ------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request of a workload: the id it is sent with (None: the transport makes one up)."""

    request_id: str | None
    model: str
    data: dict[str, Any]
    code: str | None  # the error code its input asks for (None: a prediction)


@dataclass(frozen=True)
class Received:
    """What a client got back for one request, as its prediction log record should say."""

    transport: str
    model: str
    inputs: list[Any]  # the rows the record should hold
    outputs: list[dict[str, Any]] | None
    code: str | None


def workload(prefix: str, count: int, *, unknown: bool = True) -> list[Request]:
    """``count`` requests, mostly iris predictions, errors mixed in at fixed strides: invalid inputs,
    a model that is not served (``unknown``), a model that raises; and echo predictions. Some
    predictions go without an id: only the reply can say the one hostd made up."""
    rows = list(IRIS_INPUTS.values())
    requests = []
    for i in range(count):
        request_id = f"{prefix}-{i}"
        if i % 20 == 7:
            request = Request(request_id, "iris_model", {**rows[i % len(rows)], "sepal_length": 51.0}, "INVALID_INPUT")
        elif unknown and i % 25 == 3:
            request = Request(request_id, UNKNOWN, rows[0], "MODEL_NOT_FOUND")
        elif i % 50 == 11:
            request = Request(request_id, "echo", {"x": i % 500, "fail": True}, "MODEL_ERROR")
        elif i % 10 == 5:
            request = Request(request_id, "echo", {"x": i % 500}, None)
        elif i % 13 == 0:  # all alike: any of their replies will do for any of them
            request = Request(None, "iris_model", IRIS_INPUTS[50], None)
        else:
            request = Request(request_id, "iris_model", rows[i % len(rows)], None)
        requests.append(request)
    return requests


def expected_prediction(request: Request) -> dict[str, Any]:
    """What a successful request of ``workload`` must be answered with."""
    if request.model == "echo":
        return {"y": 2.0 * request.data["x"], "text": ""}
    index = next(i for i, data in IRIS_INPUTS.items() if data == request.data)
    return {"species": IRIS_ROWS[index]}


def settle(request: Request, received: Received, answered: dict[str, Received], request_id: str) -> None:
    """Keep what the client received under the id the reply gave, after checking it is what the
    request's input asks for (so the errors really are mixed in)."""
    assert request_id not in answered, f"two requests answered as {request_id}"
    if request.request_id is not None:
        assert request_id == request.request_id, "the reply carries the request's own id"
    else:
        assert MADE_UP.fullmatch(request_id), f"a made-up id is 32 hex digits, not {request_id!r}"
    assert received.code == request.code, (request, received)
    if received.code is None:
        assert received.outputs == [expected_prediction(request)], (request, received)
    answered[request_id] = received


#: The HTTP transport for tests whose own event loop drives several clients at once, on a loaded machine:
#: a connection it opened may wait seconds for its request (hostd closes one silent for keep_alive_timeout_s).
PATIENT_HTTP = {"keep_alive_timeout_s": 30}


async def over_http(url: str, requests: list[Request], concurrency: int = 200) -> dict[str, Received]:
    """The REST prediction endpoint, ``concurrency`` connections at once; the id in X-Request-Id."""
    answered: dict[str, Received] = {}
    # A pooled connection idle past the server's keep-alive timeout may be closed by it just as it is
    # reused (a ReadError, with this process's loop also busy driving four other clients): expire first.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=1.0)
    slots = asyncio.Semaphore(concurrency)

    async def one(http: httpx.AsyncClient, request: Request) -> None:
        headers = {"X-Request-Id": request.request_id} if request.request_id is not None else {}
        async with slots:
            response = await http.post(f"/api/models/{request.model}/prediction", json=request.data,
                                       headers=headers)
        body = response.json()
        ok = response.status_code == 200
        # Refused before its body was read (no such model): the record has no inputs.
        inputs = [] if response.status_code == 404 else [request.data]
        received = Received("http", request.model, inputs, [body] if ok else None, None if ok else body["type"])
        settle(request, received, answered, response.headers["x-request-id"])

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        await asyncio.gather(*(one(http, request) for request in requests))
    return answered


def envelope(request: Request) -> bytes:
    message: dict[str, Any] = {"model": request.model, "data": request.data}
    if request.request_id is not None:
        message["id"] = request.request_id
    return orjson.dumps(message)


def from_envelope(transport: str, request: Request, reply: dict[str, Any]) -> Received:
    if "error" in reply:
        return Received(transport, request.model, [request.data], None, reply["error"]["code"])
    return Received(transport, request.model, [request.data], [reply["prediction"]], None)


async def over_ws(url: str, requests: list[Request]) -> dict[str, Received]:
    """Every request pipelined on one WebSocket, replies read as they come (by id: the anonymous
    requests are all alike, so any of their replies is any one's)."""
    answered: dict[str, Received] = {}
    by_id, anonymous = tagged(requests)
    async with connect(url, open_timeout=10, close_timeout=2, proxy=None, max_size=None) as ws:
        async def send() -> None:
            for request in requests:
                await ws.send(envelope(request).decode())

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send)
            for _ in requests:
                with anyio.fail_after(PATIENCE_S):
                    reply = orjson.loads(await ws.recv())
                request = by_id.get(reply["id"]) or anonymous.pop()
                settle(request, from_envelope("ws", request, reply), answered, reply["id"])
    return answered


def tagged(requests: list[Request]) -> tuple[dict[str, Request], list[Request]]:
    """The requests by id, and the anonymous ones (all alike: see ``workload``)."""
    by_id = {request.request_id: request for request in requests if request.request_id is not None}
    return by_id, [request for request in requests if request.request_id is None]


async def over_zmq(endpoint: str, requests: list[Request]) -> dict[str, Received]:
    """Every request pipelined on one DEALER socket (with the empty delimiter frame, like REQ)."""
    answered: dict[str, Received] = {}
    by_id, anonymous = tagged(requests)
    context = zmq.asyncio.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    # Replies wait in this socket's queue, unbounded, while the test's loop is busy with the other four
    # transports' clients (see ROOMY_ZMQ for hostd's side).
    dealer.setsockopt(zmq.RCVHWM, 0)
    dealer.connect(endpoint)
    try:
        async def send() -> None:
            for request in requests:
                await dealer.send_multipart([b"", envelope(request)])

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send)
            for _ in requests:
                with anyio.fail_after(PATIENCE_S):
                    reply = orjson.loads((await dealer.recv_multipart())[-1])
                request = by_id.get(reply["id"]) or anonymous.pop()
                settle(request, from_envelope("zmq", request, reply), answered, reply["id"])
    finally:
        dealer.close(linger=0)
        context.term()
    return answered


def grpc_inputs(data: dict[str, Any]) -> list[triton.InferInput]:
    inputs = []
    for name, value in data.items():
        tensor = triton.InferInput(name, [1], "BOOL" if isinstance(value, bool) else "FP64")
        tensor.set_data_from_numpy(np.array([value], dtype=bool if isinstance(value, bool) else np.float64))
        inputs.append(tensor)
    return inputs


async def over_grpc(target: str, requests: list[Request], concurrency: int = 50) -> dict[str, Received]:
    """OIP ModelInfer with tritonclient's asyncio client; the id in ModelInferRequest.id. A gRPC error
    carries no id, so only predictions may go without one."""
    answered: dict[str, Received] = {}
    slots = asyncio.Semaphore(concurrency)

    async def one(client: triton_aio.InferenceServerClient, request: Request) -> None:
        assert request.request_id is not None or request.code is None
        try:
            async with slots:
                result = await client.infer(request.model, grpc_inputs(request.data),
                                            request_id=request.request_id or "")
        except InferenceServerException as exc:  # the message starts with hostd's error code
            code = str(exc.message()).split(":", 1)[0]
            settle(request, Received("grpc", request.model, [request.data], None, code), answered,
                   str(request.request_id))
            return
        if request.model == "echo":
            outputs = {"y": float(result.as_numpy("y")[0]), "text": result.as_numpy("text")[0].decode()}
        else:
            outputs = {"species": result.as_numpy("species")[0].decode()}
        received = Received("grpc", request.model, [request.data], [outputs], None)
        settle(request, received, answered, result.get_response().id)

    async with triton_aio.InferenceServerClient(target) as client:
        await asyncio.gather(*(one(client, request) for request in requests))
    return answered


async def over_kafka(bootstrap: str, topics: Topics, requests: list[Request]) -> dict[str, Received]:
    """Envelopes on the input topic, each keyed by its index; replies and dead letters carry the key
    back, so even a request without an id is matched to the id hostd made up for it."""
    answered: dict[str, Received] = {}
    await produce(bootstrap, topics.input, [(str(index).encode(), envelope(request))
                                            for index, request in enumerate(requests)])
    async with Reader(bootstrap, topics.output, topics.dead_letter) as reader:
        await reader.until(lambda: len(reader.records) >= len(requests), PATIENCE_S, "every Kafka reply")
    for record in reader.records:
        request, reply = requests[int(record.key)], orjson.loads(record.value)
        settle(request, from_envelope("kafka", request, reply), answered, reply["id"])
    return answered


# -- the prediction log, as a user reads it ----------------------------------------------------------------


def log_directory(server: HostdProcess, path: str = "prediction-log") -> Path:
    """Where the file sink writes: ``path`` is relative to the config file's folder."""
    return server.config.parent / path


def read_log(directory: Path) -> list[dict[str, Any]]:
    """Every complete record in the JSONL files (a line being written is not one yet)."""
    records = []
    for path in sorted(directory.glob("predictions-*.jsonl")):
        assert LOG_FILE.fullmatch(path.name), path.name
        data = path.read_bytes()
        records += [orjson.loads(line) for line in data[:data.rfind(b"\n") + 1].splitlines()]
    return records


def check_joinable(records: list[dict[str, Any]], answered: dict[str, Received], since: datetime) -> None:
    """Exactly one record per request, and each says what its client received."""
    ids = Counter(record["request_id"] for record in records)
    assert len(records) == len(answered), f"{len(records)} records for {len(answered)} requests"
    assert set(ids) == set(answered), (f"missing: {list(set(answered) - set(ids))[:5]}, "
                                       f"unexpected: {list(set(ids) - set(answered))[:5]}")
    assert ids.most_common(1)[0][1] == 1, f"logged twice: {ids.most_common(3)}"
    now = datetime.now(UTC)
    for record in records:
        received = answered[record["request_id"]]
        assert record.keys() == {"request_id", "time", "model", "version", "transport", "inputs", "outputs",
                                 "error", "latency_ms", "cached", "trace_id"}
        assert (record["transport"], record["model"]) == (received.transport, received.model), record
        assert record["inputs"] == received.inputs, record
        assert record["outputs"] == received.outputs, record
        assert (record["error"] or {}).get("code") == received.code, record
        if received.code is not None:
            assert record["error"]["message"], record
        # Refused before a version was chosen: no version.
        assert record["version"] == (None if received.code == "MODEL_NOT_FOUND" else "1.0.0"), record
        assert since <= datetime.fromisoformat(record["time"]) <= now, record
        assert datetime.fromisoformat(record["time"]).utcoffset().total_seconds() == 0, record
        assert record["latency_ms"] >= 0 and record["cached"] is None, record


async def prom(server: HostdProcess, line_prefix: str) -> float:
    return await anyio.to_thread.run_sync(metric, server.url, line_prefix)


def written(server: HostdProcess) -> Callable[[], Awaitable[float]]:
    async def count() -> float:
        return await prom(server, 'hostd_prediction_log_records_total{outcome="written"}')

    return count


async def started(start_hostd: Start, config: dict[str, Any]) -> HostdProcess:
    return await anyio.to_thread.run_sync(lambda: start_hostd({"shutdown_grace_s": 10, **config}))


async def stopped(server: HostdProcess) -> None:
    """SIGTERM, and a clean exit (the log's buffer is flushed on the way out)."""
    assert await anyio.to_thread.run_sync(server.stop) == 0, server.output()[-3000:]


# -- 1. every request, every transport, one record each -----------------------------------------------------


async def test_ten_thousand_requests_over_five_transports_give_ten_thousand_joinable_records(
        start_tansu: StartTansu, start_hostd: Start) -> None:
    broker = start_tansu()
    topics = Topics.named("logged")
    await topics.create(broker.bootstrap)
    server = await started(start_hostd, {
        "models": [{**IRIS, **ROOMY}, echo(**ROOMY)],
        "transports": {"http": PATIENT_HTTP, "ws": {}, "zmq": ROOMY_ZMQ, "grpc": {},
                       "kafka": topics.transport(broker.bootstrap)},
        "prediction_log": {"sink": "file"}})
    since = datetime.now(UTC)
    # httpx costs the test ~7 ms of CPU a request: HTTP takes the smallest share. A gRPC error status
    # carries no request id to join by (test_an_unknown_model_over_grpc_is_logged sends its own): no
    # unknown model there.
    try:
        answers = await asyncio.gather(
            over_http(server.url, workload("h", 1_000)),
            over_ws(f"ws://127.0.0.1:{server.transports['ws']['port']}", workload("w", 3_500)),
            over_zmq(server.transports["zmq"]["bind"], workload("z", 3_000)),
            over_grpc(f"127.0.0.1:{server.transports['grpc']['port']}", workload("g", 2_000, unknown=False)),
            over_kafka(broker.bootstrap, topics, workload("k", 500)))
    except BaseException as exc:  # a reply that never came: what hostd warned about says why
        warned = [line for line in server.output().splitlines() if '"warning"' in line or '"error"' in line]
        raise AssertionError("\n".join(["a client gave up waiting; hostd's warnings:", *warned[-20:]])) from exc
    answered = {request_id: received for answer in answers for request_id, received in answer.items()}
    assert len(answered) == 10_000

    await stopped(server)  # right away: records still buffered must reach the files on the way out
    check_joinable(read_log(log_directory(server)), answered, since)
    codes = Counter(received.code for received in answered.values())
    assert codes["INVALID_INPUT"] == 500 and codes["MODEL_ERROR"] == 200 and codes["MODEL_NOT_FOUND"] == 320


async def test_an_unknown_model_over_grpc_is_logged(start_hostd: Start) -> None:
    server = await started(start_hostd, {"models": [IRIS], "transports": {"http": {}, "grpc": {}},
                                         "prediction_log": {"sink": "file"}})
    with triton.InferenceServerClient(f"127.0.0.1:{server.transports['grpc']['port']}") as client:
        with pytest.raises(InferenceServerException, match="MODEL_NOT_FOUND"):
            client.infer(UNKNOWN, grpc_inputs(iris_payload(0)), request_id="grpc-unknown")
        client.infer("iris_model", grpc_inputs(iris_payload(0)), request_id="grpc-known")
    await stopped(server)
    records = {record["request_id"]: record for record in read_log(log_directory(server))}
    assert "grpc-known" in records
    assert records["grpc-unknown"]["error"]["code"] == "MODEL_NOT_FOUND"


# -- 2. the Kafka sink ---------------------------------------------------------------------------------------


async def read_topic(bootstrap: str, topic: str, want: set[str]) -> list[tuple[bytes, dict[str, Any]]]:
    """(key, record) of every record on ``topic`` from its beginning, read until ``want`` ids are there."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    read: list[tuple[bytes, dict[str, Any]]] = []
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + PATIENCE_S
        while not want <= seen:
            assert time.monotonic() < deadline, f"{len(want - seen)} of {len(want)} records never on {topic}"
            for records in (await consumer.getmany(timeout_ms=200, max_records=5_000)).values():
                for record in records:
                    read.append((record.key, orjson.loads(record.value)))
                    seen.add(read[-1][1]["request_id"])
    finally:
        await consumer.stop()
    return read


async def test_the_kafka_sink_puts_one_record_per_request_on_the_topic_keyed_by_request_id(
        start_tansu: StartTansu, start_hostd: Start) -> None:
    broker = start_tansu()
    topics = Topics.named("sunk")
    await topics.create(broker.bootstrap)
    await create_topics(broker.bootstrap, {LOG_TOPIC: 2})  # Tansu makes no topic by itself
    # The sink names no brokers: it uses the kafka transport's.
    server = await started(start_hostd, {
        "models": [{**IRIS, **ROOMY}, echo(**ROOMY)],
        "transports": {"http": PATIENT_HTTP, "ws": {}, "kafka": topics.transport(broker.bootstrap)},
        "prediction_log": {"sink": "kafka"}})
    since = datetime.now(UTC)
    answers = await asyncio.gather(
        over_http(server.url, workload("h", 500)),
        over_ws(f"ws://127.0.0.1:{server.transports['ws']['port']}", workload("w", 9_000)),
        over_kafka(broker.bootstrap, topics, workload("k", 500)))
    answered = {request_id: received for answer in answers for request_id, received in answer.items()}
    assert len(answered) == 10_000

    read = await read_topic(broker.bootstrap, LOG_TOPIC, set(answered))
    for key, record in read:
        assert key == record["request_id"].encode(), "each record is keyed by its request id"
    # At least once: a record may come twice (a batch retried), but every request has one.
    distinct = {record["request_id"]: record for _, record in read}
    assert len(distinct) == len(answered)
    check_joinable(list(distinct.values()), answered, since)
    assert await written(server)() >= len(answered)
    assert await prom(server, 'hostd_prediction_log_records_total{outcome="dropped"}') == 0


async def timed_predictions(url: str, count: int, concurrency: int = 20) -> list[tuple[int, Any, float]]:
    """``count`` iris predictions, ``concurrency`` at a time: (status, body, seconds) of each."""
    slots = asyncio.Semaphore(concurrency)
    rows = list(IRIS_INPUTS.values())

    async def one(http: httpx.AsyncClient, n: int) -> tuple[int, Any, float]:
        async with slots:
            began = time.monotonic()
            response = await http.post("/api/models/iris_model/prediction", json=rows[n % len(rows)])
            return response.status_code, response.json(), time.monotonic() - began

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return list(await asyncio.gather(*(one(http, n) for n in range(count))))


def dead_sink(buffer: int) -> dict[str, Any]:
    """A Kafka sink whose broker is a port where nothing listens."""
    return {"sink": "kafka", "bootstrap_servers": f"127.0.0.1:{free_port()}", "buffer": buffer}


async def test_a_dead_kafka_sink_costs_requests_nothing(start_hostd: Start) -> None:
    # A small buffer: once it is full, records are dropped at once, not after the sink's retries.
    server = await started(start_hostd, {"models": [IRIS], "prediction_log": dead_sink(buffer=50)})
    answers = await timed_predictions(server.url, 300)
    assert [status for status, _, _ in answers] == [200] * 300
    assert [body for _, body, _ in answers] == [{"species": IRIS_ROWS[index]} for index in list(IRIS_INPUTS) * 60]
    # The sink tries a failing batch for ~4 s before it drops it (and gives a broker 5 s to answer):
    # a request that waited for it would take that long.
    slowest = max(seconds for _, _, seconds in answers)
    assert slowest < 3, f"a request took {slowest:.1f} s"

    dropped = 'hostd_prediction_log_records_total{outcome="dropped"}'

    async def all_dropped() -> bool:
        return await prom(server, dropped) == 300

    await until(all_dropped, "every record of the dead sink counted as dropped")
    assert await written(server)() == 0
    assert logged(server, "prediction log sink failed") >= 1, "the sink's failure is in hostd's log"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert (await http.get("/api/health/ready")).status_code == 200, "hostd stays up"
        response = await http.post("/api/models/iris_model/prediction", json=IRIS_INPUTS[100])
        assert response.json() == {"species": "Iris virginica"}

        async def one_more_dropped() -> bool:
            return await prom(server, dropped) == 301

        await until(one_more_dropped, "the record of the request after those dropped too")
        # Stopped while the sink is failing a batch: it is dropped, and hostd exits without waiting on it.
        assert (await http.post("/api/models/iris_model/prediction", json=IRIS_INPUTS[0])).status_code == 200
    began = time.monotonic()
    await stopped(server)
    assert time.monotonic() - began < 10, "the dead sink held up the shutdown"


async def test_the_buffered_gauge_counts_the_records_waiting_for_a_dead_sink(start_hostd: Start) -> None:
    server = await started(start_hostd, {"models": [IRIS], "prediction_log": dead_sink(buffer=1000)})
    # The first batch (what came within the log's 50 ms linger) goes to the sink and is retried for ~4 s;
    # records that come after it wait in the buffer. Predict a few at a time until some wait (or 3 s pass).
    waiting, deadline = 0.0, time.monotonic() + 3
    while not waiting and time.monotonic() < deadline:
        assert [status for status, _, _ in await timed_predictions(server.url, 5, concurrency=1)] == [200] * 5
        waiting = await prom(server, "hostd_prediction_log_buffered")
    dropped = await prom(server, 'hostd_prediction_log_records_total{outcome="dropped"}')
    if dropped:  # the others have gone to the sink since: none waits now (the 20 took ~4 s: a stalled machine)
        pytest.skip("too slow to see the records wait: the sink dropped the first batch already")
    assert waiting >= 1, "records wait in the buffer while the sink is retried"


# -- 4. request ids on every transport ----------------------------------------------------------------------


async def logged_as(server: HostdProcess, request_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The file log's records of ``request_ids``, once they are all written."""
    want = set(request_ids)
    directory = log_directory(server)

    async def all_there() -> bool:
        return want <= {record["request_id"] for record in read_log(directory)}

    await until(all_there, f"records of {sorted(want)}")
    return {record["request_id"]: record for record in read_log(directory) if record["request_id"] in want}


def v2_body(request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": name, "shape": [1], "datatype": "FP64", "data": [value]}
                                       for name, value in iris_payload(0).items()]}
    if request_id is not None:
        body["id"] = request_id
    return body


async def test_every_http_reply_carries_the_request_id_the_log_knows(start_hostd: Start) -> None:
    server = await started(start_hostd, {"models": [IRIS], "prediction_log": {"sink": "file"}})
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        async def post(path: str, body: Any, request_id: str | None = None) -> httpx.Response:
            return await http.post(path, json=body, headers={"X-Request-Id": request_id} if request_id else {})

        ok = await post("/api/models/iris_model/prediction", iris_payload(0), "mine-ok")
        invalid = await post("/api/models/iris_model/prediction", {"sepal_length": 5.0}, "mine-invalid")
        unknown = await post(f"/api/models/{UNKNOWN}/prediction", iris_payload(0), "mine-unknown")
        v2 = await post("/v2/models/iris_model/infer", v2_body("body-id"), "mine-v2")  # the header wins
        assert [r.status_code for r in (ok, invalid, unknown, v2)] == [200, 400, 404, 200]
        assert [r.headers["x-request-id"] for r in (ok, invalid, unknown, v2)] == [
            "mine-ok", "mine-invalid", "mine-unknown", "mine-v2"]
        assert v2.json()["id"] == "body-id", "OIP v2 repeats the body's id"

        made_up = [await post("/api/models/iris_model/prediction", iris_payload(50)),
                   await post("/api/models/iris_model/prediction", {"sepal_length": 5.0}),
                   await post(f"/api/models/{UNKNOWN}/prediction", iris_payload(0)),
                   await post("/v2/models/iris_model/infer", v2_body()),
                   # Not 1-256 visible ASCII characters: not taken, one is made up.
                   await post("/api/models/iris_model/prediction", iris_payload(100), "has a space"),
                   await post("/api/models/iris_model/prediction", iris_payload(100), "x" * 257)]
        ids = [response.headers["x-request-id"] for response in made_up]
        assert all(MADE_UP.fullmatch(request_id) for request_id in ids), ids
        assert len(set(ids)) == len(ids), "a new id each time"
        longest = await post("/api/models/iris_model/prediction", iris_payload(0), "y" * 256)
        assert longest.headers["x-request-id"] == "y" * 256

        # Not predictions, but every reply says its id too.
        for response in [await http.get("/api/health", headers={"X-Request-Id": "mine-health"}),
                         await http.get("/no/such/route", headers={"X-Request-Id": "mine-health"})]:
            assert response.headers["x-request-id"] == "mine-health", response
        assert MADE_UP.fullmatch((await http.get("/api/health")).headers["x-request-id"])

    records = await logged_as(server, ["mine-ok", "mine-invalid", "mine-unknown", "mine-v2", "y" * 256, *ids])
    assert records["mine-ok"]["outputs"] == [{"species": "Iris setosa"}]
    assert records["mine-invalid"]["error"]["code"] == "INVALID_INPUT"
    assert (records["mine-unknown"]["error"]["code"], records["mine-unknown"]["inputs"]) == ("MODEL_NOT_FOUND", [])
    assert records["mine-v2"]["outputs"] == [{"species": "Iris setosa"}]
    assert [records[request_id]["error"] is None for request_id in ids] == [True, False, False, True, True, True]


async def test_oip_v2_infer_takes_the_body_id_without_a_header(start_hostd: Start) -> None:
    server = await started(start_hostd, {"models": [IRIS], "prediction_log": {"sink": "file"}})
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.post("/v2/models/iris_model/infer", json=v2_body("body-id"))
    assert response.status_code == 200 and response.json()["id"] == "body-id"
    assert response.headers["x-request-id"] == "body-id"
    assert (await logged_as(server, ["body-id"]))["body-id"]["transport"] == "http"


async def test_grpc_envelope_and_zerorpc_replies_carry_the_request_id_the_log_knows(start_hostd: Start) -> None:
    server = await started(start_hostd, {
        "models": [IRIS], "transports": {"http": {}, "grpc": {}, "ws": {}, "zmq": {}},
        "prediction_log": {"sink": "file"}})
    with triton.InferenceServerClient(f"127.0.0.1:{server.transports['grpc']['port']}") as client:
        named = client.infer("iris_model", grpc_inputs(iris_payload(0)), request_id="grpc-mine")
        anonymous = client.infer("iris_model", grpc_inputs(iris_payload(50)))
    assert named.get_response().id == "grpc-mine"
    grpc_made_up = anonymous.get_response().id
    assert MADE_UP.fullmatch(grpc_made_up)

    async with connect(f"ws://127.0.0.1:{server.transports['ws']['port']}", proxy=None) as ws:
        replies = []
        for message in ({"id": "ws-mine", "model": "iris_model", "data": iris_payload(0)},
                        {"id": 7, "model": "iris_model", "data": iris_payload(0)},  # any JSON value
                        {"model": "iris_model", "data": iris_payload(50)},
                        {"model": UNKNOWN, "data": iris_payload(0)}):
            await ws.send(orjson.dumps(message).decode())
            replies.append(orjson.loads(await ws.recv()))
    assert [reply["id"] for reply in replies[:2]] == ["ws-mine", 7]
    ws_made_up = [replies[2]["id"], replies[3]["id"]]
    assert all(MADE_UP.fullmatch(request_id) for request_id in ws_made_up), replies
    assert replies[3]["error"]["code"] == "MODEL_NOT_FOUND"

    context = zmq.Context()
    try:
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(server.transports["zmq"]["bind"])
        dealer.send_multipart([b"", orjson.dumps({"id": "zmq-mine", "model": "iris_model", "data": iris_payload(100)})])
        assert dealer.poll(10_000), "no ZeroMQ reply"
        assert orjson.loads(dealer.recv_multipart()[-1])["id"] == "zmq-mine"
        # zerorpc: the event's message_id, which the reply's response_to repeats.
        zerorpc = context.socket(zmq.DEALER)
        zerorpc.setsockopt(zmq.LINGER, 0)
        zerorpc.connect(server.transports["zmq"]["zerorpc_bind"])
        event = [{"message_id": "zerorpc-mine", "v": 3}, "iris_model", [iris_payload(50)]]
        zerorpc.send_multipart([b"", msgpack.packb(event, use_bin_type=True)])
        assert zerorpc.poll(10_000), "no zerorpc reply"
        header, status, result = msgpack.unpackb(zerorpc.recv_multipart()[-1], raw=False)
        assert (header["response_to"], status, result) == ("zerorpc-mine", "OK", [{"species": "Iris versicolor"}])
    finally:
        context.destroy(linger=0)

    records = await logged_as(server, ["grpc-mine", grpc_made_up, "ws-mine", "7", *ws_made_up, "zmq-mine",
                                       "zerorpc-mine"])
    assert {request_id: record["transport"] for request_id, record in records.items()} == {
        "grpc-mine": "grpc", grpc_made_up: "grpc", "ws-mine": "ws", "7": "ws", ws_made_up[0]: "ws",
        ws_made_up[1]: "ws", "zmq-mine": "zmq", "zerorpc-mine": "zerorpc"}
    assert records[grpc_made_up]["outputs"] == records[ws_made_up[0]]["outputs"] == [{"species": "Iris versicolor"}]
    assert records[ws_made_up[1]]["error"]["code"] == "MODEL_NOT_FOUND"


async def test_an_arq_job_id_is_its_request_id(start_redis: StartRedis, start_hostd: Start) -> None:
    redis = start_redis()
    queue = "hostd-test:logged"
    server = await started(start_hostd, {
        "models": [IRIS], "prediction_log": {"sink": "file"},
        "transports": {"http": {}, "arq": {"redis_url": redis.url, "queue_name": queue, "retry_backoff_s": 0.2}}})
    pool = await create_pool(RedisSettings(host="127.0.0.1", port=redis.port, conn_timeout=2),
                             job_serializer=serialize, job_deserializer=deserialize_errors)
    try:
        good = await pool.enqueue_job("predict", "iris_model", iris_payload(100), _queue_name=queue)
        mine = await pool.enqueue_job("predict", "iris_model", iris_payload(0), _queue_name=queue, _job_id="arq-mine")
        unknown = await pool.enqueue_job("predict", UNKNOWN, iris_payload(0), _queue_name=queue)
        assert good is not None and mine is not None and unknown is not None
        outcomes = [await finished(job) for job in (good, mine, unknown)]
    finally:
        await pool.aclose()
    assert [outcome.success for outcome in outcomes] == [True, True, False]

    records = await logged_as(server, [good.job_id, "arq-mine", unknown.job_id])
    assert {record["transport"] for record in records.values()} == {"arq"}
    assert records[good.job_id]["outputs"] == [outcomes[0].result] == [{"species": "Iris virginica"}]
    assert records["arq-mine"]["outputs"] == [{"species": "Iris setosa"}]
    assert records[unknown.job_id]["error"]["code"] == "MODEL_NOT_FOUND"


# -- 5. feedback: labels by request id, live quality ----------------------------------------------------------


def wrong_species(species: str) -> str:
    return next(other for other in SPECIES.values() if other != species)


async def quality_of(http: httpx.AsyncClient, model: str) -> dict[str, Any]:
    [figures] = [item for item in (await http.get("/api/quality")).json()["quality"] if item["model"] == model]
    return dict(figures)


async def test_labels_over_http_and_websocket_give_the_accuracy_and_mae_the_predictions_imply(
        start_hostd: Start) -> None:
    server = await started(start_hostd, {"models": [IRIS, DIABETES], "transports": {"http": {}, "ws": {}},
                                         "feedback": {}})
    # Every iris row predicted twice, over HTTP and over the WebSocket; each label is the true species,
    # but for every third prediction a wrong one.
    predicted: dict[str, str] = {}  # request id -> the species the client was told
    labels: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http, \
            connect(f"ws://127.0.0.1:{server.transports['ws']['port']}", proxy=None) as ws:
        for index, truth in IRIS_ROWS.items():
            response = await http.post("/api/models/iris_model/prediction", json=iris_payload(index))
            predicted[response.headers["x-request-id"]] = response.json()["species"]
            await ws.send(orjson.dumps({"model": "iris_model", "data": iris_payload(index)}).decode())
            reply = orjson.loads(await ws.recv())
            predicted[reply["id"]] = reply["prediction"]["species"]
            for request_id in (response.headers["x-request-id"], reply["id"]):
                labels[request_id] = wrong_species(truth) if len(labels) % 3 == 0 else truth

        joined = []
        for n, (request_id, label) in enumerate(labels.items()):
            if n % 2:
                await ws.send(orjson.dumps({"id": f"label-{n}", "op": "feedback", "model": "iris_model",
                                            "request_id": request_id, "label": label}).decode())
                reply = orjson.loads(await ws.recv())
                assert reply["id"] == f"label-{n}"
                joined.append(reply["feedback"])
            else:
                response = await http.post("/api/models/iris_model/feedback", json={"request_id": request_id,
                                                                                    "label": label})
                assert response.status_code == 200
                joined.append(response.json())
        assert joined == [{"request_id": request_id, "model": "iris_model", "version": "1.0.0", "joined": True}
                          for request_id in labels]

        # Diabetes: progression is the mean of the predictive distribution, the same for the same input
        # (only `sample` is a random draw), so labels can be compared with it.
        first = (await http.post("/api/models/diabetes_model/prediction", json=diabetes_payload(0))).json()
        again = (await http.post("/api/models/diabetes_model/prediction", json=diabetes_payload(0))).json()
        assert first["progression"] == again["progression"]
        targets = load_diabetes(scaled=False).target
        errors = []
        for index in range(8):
            response = await http.post("/api/models/diabetes_model/prediction", json=diabetes_payload(index))
            label = float(targets[index])
            feedback = await http.post("/api/models/diabetes_model/feedback",
                                       json={"request_id": response.headers["x-request-id"], "label": label})
            assert feedback.json()["joined"] is True
            errors.append(response.json()["progression"] - label)

        # An id no prediction had: not joined, not an error, counted.
        unknown = await http.post("/api/models/iris_model/feedback", json={"request_id": "never-sent",
                                                                           "label": "Iris setosa"})
        assert unknown.status_code == 200
        assert unknown.json()["joined"] is False and unknown.json()["reason"]
        assert (await http.post(f"/api/models/{UNKNOWN}/feedback", json={"request_id": "x", "label": 1})
                ).status_code == 404

        iris = await quality_of(http, "iris_model")
        diabetes = await quality_of(http, "diabetes_model")

    right = sum(labels[request_id] == species for request_id, species in predicted.items())
    assert 0 < right < len(labels)
    assert iris == {"model": "iris_model", "version": "1.0.0", "kind": "classification", "labels": len(labels),
                    "accuracy": right / len(labels)}
    mae = sum(abs(error) for error in errors) / len(errors)
    rmse = math.sqrt(sum(error * error for error in errors) / len(errors))
    assert diabetes.keys() == {"model", "version", "kind", "labels", "mae", "rmse"}
    assert (diabetes["kind"], diabetes["labels"]) == ("regression", len(errors))
    assert diabetes["mae"] == pytest.approx(mae, rel=1e-12) and diabetes["rmse"] == pytest.approx(rmse, rel=1e-12)

    quality = 'hostd_model_quality{{metric="{}",model="{}",version="1.0.0"}}'
    assert await prom(server, quality.format("accuracy", "iris_model")) == right / len(labels)
    assert await prom(server, quality.format("mae", "diabetes_model")) == pytest.approx(mae, rel=1e-12)
    assert await prom(server, quality.format("rmse", "diabetes_model")) == pytest.approx(rmse, rel=1e-12)
    assert await prom(server, 'hostd_feedback_total{model="iris_model",outcome="unknown"}') == 1
    assert await prom(server, 'hostd_feedback_total{model="iris_model",outcome="joined"}') == len(labels)


async def test_labels_on_the_kafka_feedback_topic(start_tansu: StartTansu, start_hostd: Start) -> None:
    broker = start_tansu()
    topics = Topics.named("labelled")
    feedback_topic = "labelled.feedback"
    await topics.create(broker.bootstrap)
    await create_topics(broker.bootstrap, {feedback_topic: 2})
    server = await started(start_hostd, {
        "models": [IRIS], "feedback": {},
        "transports": {"http": {}, "kafka": topics.transport(broker.bootstrap, feedback_topic=feedback_topic)}})
    requests = [Request(f"k-{n}", "iris_model", iris_payload(index), None)
                for n, index in enumerate(list(IRIS_ROWS) * 2)]
    answered = await over_kafka(broker.bootstrap, topics, requests)
    labels = {request.request_id: wrong_species(expected_prediction(request)["species"]) if n % 4 == 1
              else expected_prediction(request)["species"] for n, request in enumerate(requests)}
    messages = [(request_id.encode(), orjson.dumps({"model": "iris_model", "request_id": request_id, "label": label}))
                for request_id, label in labels.items()]
    messages += [(b"unknown", orjson.dumps({"model": "iris_model", "request_id": "never-sent", "label": "x"})),
                 (b"invalid", orjson.dumps({"id": "no-label", "model": "iris_model", "request_id": "k-0"}))]
    await produce(broker.bootstrap, feedback_topic, messages)

    async def counted() -> bool:
        outcomes = [await prom(server, f'hostd_feedback_total{{model="iris_model",outcome="{outcome}"}}')
                    for outcome in ("joined", "unknown")]
        return outcomes == [len(labels), 1]

    await until(counted, "every label on the feedback topic taken")
    async with Reader(broker.bootstrap, topics.output, topics.dead_letter) as reader:
        await reader.until(lambda: bool(reader.on(topics.dead_letter)), PATIENCE_S, "the invalid label's dead letter")
        await reader.past(topics.input)  # whatever the labels were going to produce, it is out by now
    [letter] = reader.on(topics.dead_letter)
    assert (letter.key, orjson.loads(letter.value)["error"]["code"]) == (b"invalid", "INVALID_INPUT")
    assert orjson.loads(letter.value)["topic"] == feedback_topic
    assert {orjson.loads(record.value)["id"] for record in reader.on(topics.output)} == set(answered), \
        "a label taken produces no output"

    right = sum(labels[request_id] == received.outputs[0]["species"]  # type: ignore[index]
                for request_id, received in answered.items())
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert await quality_of(http, "iris_model") == {"model": "iris_model", "version": "1.0.0",
                                                        "kind": "classification", "labels": len(labels),
                                                        "accuracy": right / len(labels)}


async def test_a_late_label_is_joined_from_the_file_log(start_hostd: Start) -> None:
    # Only the last prediction is remembered: a label for any other must be found in the log's files.
    server = await started(start_hostd, {"models": [IRIS], "feedback": {"remember": 1},
                                         "prediction_log": {"sink": "file"}})
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        ids = []
        for index in (0, 50, 100):
            response = await http.post("/api/models/iris_model/prediction", json=iris_payload(index))
            ids.append(response.headers["x-request-id"])
        await logged_as(server, ids)  # written off the request path: wait for the files to have them

        async def label(request_id: str, species: str) -> dict[str, Any]:
            response = await http.post("/api/models/iris_model/feedback",
                                       json={"request_id": request_id, "label": species})
            assert response.status_code == 200
            return dict(response.json())

        assert (await label(ids[0], "Iris setosa"))["joined"] is True  # the oldest: from the log
        assert (await label(ids[1], "Iris virginica"))["joined"] is True  # from the log too, a wrong label
        assert (await label(ids[2], "Iris virginica"))["joined"] is True  # remembered
        assert (await label("never-sent", "Iris setosa"))["joined"] is False
        assert await quality_of(http, "iris_model") == {"model": "iris_model", "version": "1.0.0",
                                                        "kind": "classification", "labels": 3, "accuracy": 2 / 3}
    assert await prom(server, 'hostd_feedback_total{model="iris_model",outcome="unknown"}') == 1


async def test_a_model_may_name_the_output_field_labels_are_compared_with(start_hostd: Start) -> None:
    # The echo model's first field is y (a float: MAE); compared as classes on its text instead.
    server = await started(start_hostd, {"models": [echo(feedback={"field": "text", "kind": "classification"})],
                                         "feedback": {}})
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for n, text in enumerate(["a", "b", "c", "d"]):
            response = await http.post("/api/models/echo/prediction", json={"x": n, "text": text})
            assert response.json()["text"] == text.upper()
            label = text.upper() if n else "nope"
            feedback = await http.post("/api/models/echo/feedback", json={
                "request_id": response.headers["x-request-id"], "label": label})
            assert feedback.json()["joined"] is True
        assert await quality_of(http, "echo") == {"model": "echo", "version": "1.0.0", "kind": "classification",
                                                  "labels": 4, "accuracy": 0.75}
