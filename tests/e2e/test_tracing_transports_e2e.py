"""OpenTelemetry tracing on every transport, with each transport's real client (issue 20).

One daemon runs in this process (on its own event loop, in a thread) with every transport, a real Kafka
broker (Tansu) and Redis; the test installs the SDK's in-memory exporter with ``tracing.enable`` and
reads what a user's tracing backend would get: one server span per request, continuing the caller's
trace, and under it the steps the request went through (validation, the wait in the batcher, the model
call, the cache lookup).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton
import yaml
import zmq
from aiokafka import AIOKafkaProducer
from anyio.from_thread import BlockingPortal, start_blocking_portal
from arq import create_pool
from arq.connections import RedisSettings
from hostd_arq.serializer import deserialize_errors, serialize
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from websockets.sync.client import connect as ws_connect

from hostd import daemon, plugins, tracing
from hostd.configfile import load_settings
from tests.conftest import PORT_ATTEMPTS, PORT_TAKEN, ROOT, with_free_ports
from tests.e2e.brokers import Reader, Redis, Tansu, Topics, finished, request, tansu_service
from tests.serverless.events import Context, event, reply
from tests.support.e2e import PATIENCE_S, iris_payload
from tests.support.tracing import spans_in_memory

pytestmark = pytest.mark.e2e

IRIS = {"class_path": "iris_model.model:IrisModel"}  # batches (the default max_batch_size is 64)
# A cached model that does not batch: its model call is a step of the request itself, not of a batch.
CACHED_ECHO = {"class_path": "tests.support.toy:EchoModel", "cache": {}, "batching": {"max_batch_size": 1}}
QUEUE = "hostd-test:traced"
TRACESTATE = "caller=e2e,other=1"  # W3C tracestate: vendor entries the caller's tracer keeps
INVALID = {**iris_payload(0), "sepal_length": 51.0}  # out of the schema's range
SERVER_KINDS = (SpanKind.SERVER, SpanKind.CONSUMER)
HTTP_ROUTES = {"/api/models/iris_model/prediction": "POST /api/models/{name}/prediction",
               "/v2/models/iris_model/infer": "POST /v2/models/{name}/infer"}

# The real zerorpc client in its own process (it runs on gevent, which must not patch pytest's), with a
# middleware that puts the caller's traceparent in each request event's header.
ZERORPC_CLIENT = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import zerorpc
endpoint, traceparent, model, data = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])

class Traceparent:
    def client_before_request(self, event):
        event.header["traceparent"] = traceparent

zerorpc.Context.get_instance().register_middleware(Traceparent())
client = zerorpc.Client(timeout=20)
client.connect(endpoint)
print(json.dumps(getattr(client, model)(data)))
client.close()
"""


# -- the caller's trace, and the spans it gave -------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """A client's own span, which the request's server span should continue."""

    trace_id: int
    span_id: int

    @classmethod
    def new(cls) -> Caller:
        return cls(secrets.randbits(128) | 1, secrets.randbits(64) | 1)  # never the invalid all-zero ids

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-01"


def wait_for_spans(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    """Every span of the trace, once its server span has ended (a transport may end it after the reply
    has gone, and Kafka and arq answer asynchronously: the client may have its answer first)."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        spans = [span for span in exporter.get_finished_spans() if span.context.trace_id == trace_id]
        if any(span.kind in SERVER_KINDS for span in spans):
            return spans
        assert time.monotonic() < deadline, f"no server span of trace {trace_id:032x}: {[s.name for s in spans]}"
        time.sleep(0.01)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def times(span: ReadableSpan) -> tuple[int, int]:
    assert span.start_time is not None and span.end_time is not None, f"{span.name} has not ended"
    return span.start_time, span.end_time


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> dict[str, list[ReadableSpan]]:
    """The spans directly under ``parent``, by name."""
    under: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        if span.parent is not None and span.parent.span_id == parent.context.span_id:
            under.setdefault(span.name, []).append(span)
    return under


def assert_steps(spans: list[ReadableSpan], server: ReadableSpan, *, batched: bool = True,
                 model: str = "iris_model", alone: bool = True) -> dict[str, list[ReadableSpan]]:
    """``server``'s children: one validation, one model call (and one wait in the batcher where the model
    batches), each in the same trace and within the server span's time. ``alone``: the request was
    validated by itself (messages of a burst may be validated together: each one's span shows the step)."""
    steps = children(spans, server)
    expected = {"hostd.validate", "hostd.model"} | ({"hostd.batch_wait"} if batched else set())
    assert expected <= steps.keys(), sorted(steps)
    for name in expected:
        assert len(steps[name]) == 1, f"{len(steps[name])} {name} spans"
    for step in (span for found in steps.values() for span in found):
        assert step.context.trace_id == server.context.trace_id
        (began, ended), (opened, closed) = times(step), times(server)
        assert opened <= began <= ended <= closed, step.name
    [call] = steps["hostd.model"]
    assert attrs(call)["hostd.model"] == model
    assert attrs(call)["hostd.batch.rows"] >= 1 and attrs(call)["hostd.batch.requests"] >= 1
    rows = attrs(steps["hostd.validate"][0])["hostd.rows"]
    assert rows == 1 if alone else rows >= 1
    return steps


def served(exporter: InMemorySpanExporter, caller: Caller, name: str, transport: str, *,
           kind: SpanKind = SpanKind.SERVER, code: str = "OK") -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The one server span of the caller's request, checked, and every span of its trace."""
    spans = wait_for_spans(exporter, caller.trace_id)
    [server] = [span for span in spans if span.kind in SERVER_KINDS]
    assert (server.name, server.kind) == (name, kind)
    assert server.parent is not None and server.parent.is_remote
    assert server.parent.span_id == caller.span_id, "the caller's span is the server span's parent"
    assert attrs(server)["hostd.transport"] == transport
    assert attrs(server)["hostd.code"] == code
    if code in tracing.SERVER_FAULTS:
        assert server.status.status_code is StatusCode.ERROR
    else:
        assert server.status.status_code is not StatusCode.ERROR, "a caller's mistake is not a server error"
    return server, spans


# -- one daemon, every transport, traced into memory -------------------------------------------------------


@dataclass
class Traced:
    exporter: InMemorySpanExporter
    transports: dict[str, dict[str, Any]]
    broker: Tansu
    redis: Redis
    topics: Topics
    folder: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.transports['http']['port']}"

    def port(self, transport: str) -> int:
        return int(self.transports[transport]["port"])


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this process, every span kept in memory."""
    with spans_in_memory() as spans:
        yield spans


def start_redis(folder: Path) -> Redis:
    def command(port: int) -> list[str]:
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]

    redis = Redis("redis", command, folder / "redis.log")
    redis.start(fresh_port_if_taken=True)
    return redis


def port_taken(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(port_taken(inner) for inner in exc.exceptions)
    return bool(PORT_TAKEN.search(str(exc))) or (exc.__cause__ is not None and port_taken(exc.__cause__))


def start_daemon(portal: BlockingPortal, config: dict[str, Any],
                 folder: Path) -> tuple[Future[None], anyio.Event, dict[str, Any]]:
    """``hostd run``'s daemon on the portal's loop, every listener on a free port (fresh ones if one was
    taken meanwhile); its future, its stop event and its transports section."""
    pm = plugins.plugin_manager()
    known = {name: transport.settings for name, transport in plugins.transports(pm).items()}
    attempt = 1
    while True:
        transports = with_free_ports(config["transports"])
        path = folder / "host.yaml"
        path.write_text(yaml.safe_dump({**config, "transports": transports}))
        stop = portal.call(anyio.Event)
        try:
            future, _ = portal.start_task(partial(daemon.serve, load_settings(path, known), pm, stop,
                                                  handle_signals=False))
            return future, stop, transports
        except BaseException as exc:
            if attempt == PORT_ATTEMPTS or not port_taken(exc):
                raise
            attempt += 1


@pytest.fixture(scope="module")
def traced(exporter: InMemorySpanExporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    folder = tmp_path_factory.mktemp("traced")
    broker = tansu_service(folder, "memory://tansu/")
    redis: Redis | None = None
    try:
        broker.start(fresh_port_if_taken=True)
        redis = start_redis(folder)
        topics = Topics.named("traced")
        anyio.run(topics.create, broker.bootstrap)
        arq = {"redis_url": redis.url, "queue_name": QUEUE, "retry_backoff_s": 0.2, "retry_backoff_max_s": 1.0}
        config = {"models": [IRIS, CACHED_ECHO], "shutdown_grace_s": 5, "prediction_log": {"sink": "file"},
                  "transports": {"http": {}, "grpc": {}, "ws": {}, "zmq": {}, "arq": arq,
                                 "kafka": topics.transport(broker.bootstrap, group_id="hostd-traced")}}
        with start_blocking_portal() as portal:
            future, stop, transports = start_daemon(portal, config, folder)
            try:
                yield Traced(exporter, transports, broker, redis, topics, folder)
            finally:
                portal.call(stop.set)
                future.result(timeout=30)
    finally:
        broker.kill()
        if redis is not None:
            redis.kill()


# -- one prediction per transport, continuing the caller's trace --------------------------------------------


@pytest.mark.parametrize("path", list(HTTP_ROUTES))
def test_http_continues_the_callers_trace(traced: Traced, path: str) -> None:
    caller = Caller.new()
    body: dict[str, Any] = iris_payload(0)
    if path.startswith("/v2"):
        body = {"inputs": [{"name": name, "shape": [1], "datatype": "FP64", "data": [value]}
                           for name, value in body.items()]}
    headers = {"traceparent": caller.traceparent, "tracestate": TRACESTATE}
    response = httpx.post(f"{traced.url}{path}", json=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    server, spans = served(traced.exporter, caller, HTTP_ROUTES[path], "http")
    assert server.context.trace_state.get("caller") == "e2e", "the caller's tracestate is carried on"
    assert attrs(server)["http.response.status_code"] == 200
    assert attrs(server)["hostd.request_id"] == response.headers["x-request-id"]
    assert_steps(spans, server)


def test_the_prediction_log_record_names_the_callers_trace(traced: Traced) -> None:
    caller = Caller.new()
    response = httpx.post(f"{traced.url}/api/models/iris_model/prediction", json=iris_payload(50),
                          headers={"traceparent": caller.traceparent, "X-Request-Id": "logged-with-trace"}, timeout=10)
    assert response.status_code == 200
    assert logged_trace_ids(traced, {"logged-with-trace"}) == {"logged-with-trace": [f"{caller.trace_id:032x}"]}


def logged_trace_ids(traced: Traced, request_ids: set[str]) -> dict[str, list[str | None]]:
    """The trace id of each prediction log record of ``request_ids``, once each has one."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        found: dict[str, list[str | None]] = {}
        for record in read_log(traced.folder / "prediction-log"):
            if record["request_id"] in request_ids:
                found.setdefault(record["request_id"], []).append(record["trace_id"])
        if found.keys() == request_ids:
            return found
        assert time.monotonic() < deadline, f"no prediction log record of {sorted(request_ids - found.keys())}"
        time.sleep(0.02)


def read_log(directory: Path) -> list[dict[str, Any]]:
    """Every complete record of the prediction log's files (a line being written is not one yet)."""
    records = []
    for path in sorted(directory.glob("predictions-*.jsonl")):
        data = path.read_bytes()
        records += [orjson.loads(line) for line in data[:data.rfind(b"\n") + 1].splitlines()]
    return records


def grpc_inputs(data: dict[str, float]) -> list[triton.InferInput]:
    inputs = []
    for name, value in data.items():
        tensor = triton.InferInput(name, [1], "FP64")
        tensor.set_data_from_numpy(np.array([value], dtype=np.float64))
        inputs.append(tensor)
    return inputs


def test_grpc_continues_the_callers_trace(traced: Traced) -> None:
    caller = Caller.new()
    with triton.InferenceServerClient(f"127.0.0.1:{traced.port('grpc')}") as client:
        result = client.infer("iris_model", grpc_inputs(iris_payload(0)), client_timeout=10,
                              headers={"traceparent": caller.traceparent, "tracestate": TRACESTATE})
    assert result.as_numpy("species")[0] == b"Iris setosa"
    server, spans = served(traced.exporter, caller, "inference.GRPCInferenceService/ModelInfer", "grpc")
    assert server.context.trace_state.get("caller") == "e2e"
    assert attrs(server)["rpc.system"] == "grpc"
    assert_steps(spans, server)


def envelope(caller: Caller | None, data: dict[str, Any], model: str = "iris_model", **fields: Any) -> str:
    message = {"model": model, "data": data, **fields}
    if caller is not None:
        message["traceparent"] = caller.traceparent
    return orjson.dumps(message).decode()


def test_websocket_continues_the_callers_trace_from_the_envelope(traced: Traced) -> None:
    caller = Caller.new()
    with ws_connect(f"ws://127.0.0.1:{traced.port('ws')}", open_timeout=10, proxy=None) as ws:
        ws.send(envelope(caller, iris_payload(100), id="ws-1", tracestate=TRACESTATE))
        answer = orjson.loads(ws.recv(timeout=PATIENCE_S))
    assert answer["prediction"] == {"species": "Iris virginica"}
    server, spans = served(traced.exporter, caller, "ws predict", "ws")
    assert server.context.trace_state.get("caller") == "e2e"
    assert attrs(server)["hostd.model"] == "iris_model"
    assert_steps(spans, server)


def dealer_ask(endpoint: str, message: str) -> dict[str, Any]:
    """One envelope on a DEALER socket (framed as a REQ socket would), and its reply."""
    context = zmq.Context()
    try:
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)
        dealer.send_multipart([b"", message.encode()])
        assert dealer.poll(int(PATIENCE_S * 1000)), "no ZeroMQ reply"
        answer: dict[str, Any] = orjson.loads(dealer.recv_multipart()[-1])
        return answer
    finally:
        context.destroy(linger=0)


def test_zeromq_continues_the_callers_trace_from_the_envelope(traced: Traced) -> None:
    caller = Caller.new()
    answer = dealer_ask(traced.transports["zmq"]["bind"], envelope(caller, iris_payload(50), id="zmq-1"))
    assert answer["prediction"] == {"species": "Iris versicolor"}
    server, spans = served(traced.exporter, caller, "zmq predict", "zmq")
    assert_steps(spans, server)


def test_zerorpc_continues_the_trace_a_client_middleware_put_in_the_header(traced: Traced) -> None:
    caller = Caller.new()
    done = subprocess.run([sys.executable, "-c", ZERORPC_CLIENT, traced.transports["zmq"]["zerorpc_bind"],
                           caller.traceparent, "iris_model", json.dumps(iris_payload(0))],
                          cwd=ROOT, capture_output=True, text=True, timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"species": "Iris setosa"}
    server, spans = served(traced.exporter, caller, "zerorpc predict", "zerorpc")
    assert attrs(server)["hostd.model"] == "iris_model"  # an attribute: span names stay few
    assert_steps(spans, server)


@pytest.mark.anyio
async def test_kafka_each_record_of_a_poll_has_its_span_and_its_output_carries_the_trace_on(traced: Traced) -> None:
    # Three records on one partition, sent together: answered in one poll (one data-plane call) or more.
    rows = {"kafka-0": iris_payload(0), "kafka-1": iris_payload(100), "kafka-bad": INVALID}
    callers = {request_id: Caller.new() for request_id in rows}
    producer = AIOKafkaProducer(bootstrap_servers=traced.broker.bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        sent = [await producer.send(traced.topics.input, request(request_id, "iris_model", data), key=b"traced",
                                    headers=[("traceparent", callers[request_id].traceparent.encode())])
                for request_id, data in rows.items()]
        for ack in sent:
            await ack
    finally:
        await producer.stop()
    async with Reader(traced.broker.bootstrap, traced.topics.output, traced.topics.dead_letter) as reader:
        await reader.until(lambda: set(rows) <= reader.answered, PATIENCE_S, "the Kafka replies")
    outputs = {orjson.loads(record.value)["id"]: record for record in reader.records}
    assert orjson.loads(outputs["kafka-1"].value)["prediction"] == {"species": "Iris virginica"}
    assert outputs["kafka-bad"].topic == traced.topics.dead_letter

    name = f"process {traced.topics.input}"
    for request_id, caller in callers.items():
        code = "INVALID_INPUT" if request_id == "kafka-bad" else "OK"
        server, spans = await anyio.to_thread.run_sync(partial(
            served, traced.exporter, caller, name, "kafka", kind=SpanKind.CONSUMER, code=code))
        assert attrs(server)["messaging.destination.name"] == traced.topics.input
        if code == "OK":
            assert_steps(spans, server, alone=False)
        else:
            assert "hostd.model" not in children(spans, server)
        # Its output (a reply or a dead letter) names the same trace, the record's span as its parent.
        version, trace_id, parent_id, flags = dict(outputs[request_id].headers)["traceparent"].decode().split("-")
        assert (version, trace_id, flags) == ("00", f"{caller.trace_id:032x}", "01")
        assert int(parent_id, 16) == server.context.span_id
    # Answered together, each record's prediction log record still names its own trace.
    assert await anyio.to_thread.run_sync(logged_trace_ids, traced, set(rows)) == {
        request_id: [f"{caller.trace_id:032x}"] for request_id, caller in callers.items()}


@pytest.mark.anyio
async def test_arq_continues_the_trace_of_the_job_keyword(traced: Traced) -> None:
    caller = Caller.new()
    pool = await create_pool(RedisSettings(host="127.0.0.1", port=traced.redis.port, conn_timeout=2),
                             job_serializer=serialize, job_deserializer=deserialize_errors)
    try:
        job = await pool.enqueue_job("predict", "iris_model", iris_payload(50), traceparent=caller.traceparent,
                                     _queue_name=QUEUE)
        assert job is not None
        result = await finished(job)
    finally:
        await pool.aclose()
    assert result.success and result.result == {"species": "Iris versicolor"}
    server, spans = await anyio.to_thread.run_sync(partial(
        served, traced.exporter, caller, "arq predict", "arq", kind=SpanKind.CONSUMER))
    assert attrs(server)["hostd.request_id"] == job.job_id
    assert_steps(spans, server)


def test_lambda_continues_the_callers_trace_from_the_event_headers(
        exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "host.yaml"
    config.write_text("models:\n  - class_path: tests.support.toy:EchoModel\n")
    loop = asyncio.new_event_loop()  # Mangum runs each invocation on the thread's loop
    asyncio.set_event_loop(loop)
    try:
        monkeypatch.setenv("HOSTD_CONFIG", str(config))  # importing the module builds its own handler from it
        from hostd_lambda.handler import create_handler
        handler = create_handler(config)
        caller = Caller.new()
        response = handler(event("http", "POST", "/api/models/echo/prediction", body=orjson.dumps({"x": 4}).decode(),
                                 headers={"traceparent": caller.traceparent}), Context())
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    answer = reply(response)
    assert answer.status == 200 and answer.json() == {"y": 8.0, "text": ""}, answer
    server, spans = served(exporter, caller, "POST /api/models/{name}/prediction", "http")
    assert_steps(spans, server, model="echo")


# -- errors, bursts, new traces, the cache -------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["ws", "zmq", "grpc", "http"])
def test_an_invalid_request_is_traced_with_its_code_and_never_reaches_the_model(traced: Traced,
                                                                                 transport: str) -> None:
    caller = Caller.new()
    if transport == "ws":
        with ws_connect(f"ws://127.0.0.1:{traced.port('ws')}", open_timeout=10, proxy=None) as ws:
            ws.send(envelope(caller, INVALID, id="bad"))
            assert orjson.loads(ws.recv(timeout=PATIENCE_S))["error"]["code"] == "INVALID_INPUT"
        name, code = "ws predict", "INVALID_INPUT"
    elif transport == "zmq":
        answer = dealer_ask(traced.transports["zmq"]["bind"], envelope(caller, INVALID, id="bad"))
        assert answer["error"]["code"] == "INVALID_INPUT"
        name, code = "zmq predict", "INVALID_INPUT"
    elif transport == "grpc":
        with triton.InferenceServerClient(f"127.0.0.1:{traced.port('grpc')}") as client, \
                pytest.raises(triton.InferenceServerException, match="INVALID_INPUT"):
            client.infer("iris_model", grpc_inputs(INVALID), headers={"traceparent": caller.traceparent},
                         client_timeout=10)
        name, code = "inference.GRPCInferenceService/ModelInfer", "INVALID_INPUT"
    else:
        response = httpx.post(f"{traced.url}/api/models/iris_model/prediction", json=INVALID,
                              headers={"traceparent": caller.traceparent}, timeout=10)
        assert response.status_code == 400
        name, code = "POST /api/models/{name}/prediction", "400"  # HTTP names the status it answered
    server, spans = served(traced.exporter, caller, name, transport, code=code)
    steps = children(spans, server)
    assert "hostd.validate" in steps
    assert not {"hostd.model", "hostd.batch_wait"} & steps.keys(), sorted(steps)


def test_a_model_error_is_a_server_fault(traced: Traced) -> None:
    caller = Caller.new()
    with ws_connect(f"ws://127.0.0.1:{traced.port('ws')}", open_timeout=10, proxy=None) as ws:
        ws.send(envelope(caller, {"x": 1, "fail": True}, model="echo", id="fails"))
        assert orjson.loads(ws.recv(timeout=PATIENCE_S))["error"]["code"] == "MODEL_ERROR"
    server, spans = served(traced.exporter, caller, "ws predict", "ws", code="MODEL_ERROR")
    assert attrs(server)["error.type"] == "MODEL_ERROR"
    assert_steps(spans, server, batched=False, model="echo")


def test_a_pipelined_websocket_burst_gives_each_message_its_own_trace_and_model_call(traced: Traced) -> None:
    callers = [Caller.new() for _ in range(3)]
    with ws_connect(f"ws://127.0.0.1:{traced.port('ws')}", open_timeout=10, proxy=None) as ws:
        for n, (caller, row) in enumerate(zip(callers, (0, 50, 100), strict=True)):  # sent without waiting
            ws.send(envelope(caller, iris_payload(row), id=f"burst-{n}"))
        answers = {}
        for _ in callers:
            answer = orjson.loads(ws.recv(timeout=PATIENCE_S))
            answers[answer["id"]] = answer["prediction"]["species"]
    assert answers == {"burst-0": "Iris setosa", "burst-1": "Iris versicolor", "burst-2": "Iris virginica"}
    servers = []
    for caller in callers:
        server, spans = served(traced.exporter, caller, "ws predict", "ws")
        assert_steps(spans, server, alone=False)
        servers.append(server)
    assert len({server.context.span_id for server in servers}) == 3


def test_a_request_without_traceparent_starts_a_new_trace(traced: Traced) -> None:
    response = httpx.post(f"{traced.url}/api/models/iris_model/prediction", json=iris_payload(0),
                          headers={"X-Request-Id": "untraced-1"}, timeout=10)
    assert response.status_code == 200
    deadline = time.monotonic() + PATIENCE_S
    while not (found := [span for span in traced.exporter.get_finished_spans()
                         if span.kind is SpanKind.SERVER and attrs(span).get("hostd.request_id") == "untraced-1"]):
        assert time.monotonic() < deadline, "no server span for the request"
        time.sleep(0.01)
    [server] = found
    assert server.parent is None, "a root span"
    assert server.context.trace_id != 0 and attrs(server)["hostd.code"] == "OK"
    spans = wait_for_spans(traced.exporter, server.context.trace_id)
    assert [span for span in spans if span.kind in SERVER_KINDS] == [server], "a trace of its own"
    assert_steps(spans, server)


def test_the_cache_lookup_is_a_step_and_a_hit_skips_the_model(traced: Traced) -> None:
    first, second = Caller.new(), Caller.new()
    for caller in (first, second):
        response = httpx.post(f"{traced.url}/api/models/echo/prediction", json={"x": 321},
                              headers={"traceparent": caller.traceparent}, timeout=10)
        assert response.json() == {"y": 642.0, "text": ""}
    server, spans = served(traced.exporter, first, "POST /api/models/{name}/prediction", "http")
    steps = assert_steps(spans, server, batched=False, model="echo")
    [lookup] = steps["hostd.cache_lookup"]
    assert attrs(lookup)["hostd.cache.hits"] == 0
    server, spans = served(traced.exporter, second, "POST /api/models/{name}/prediction", "http")
    steps = children(spans, server)
    [lookup] = steps["hostd.cache_lookup"]
    assert attrs(lookup)["hostd.cache.hits"] == 1
    assert "hostd.model" not in steps, "a hit is answered without the model"


def test_a_path_no_route_takes_does_not_name_its_span(traced: Traced) -> None:
    """A scanner's random paths would each be a span name: a 404 (a path no route has, an unknown model
    refused before routing) is named by its method alone, and a method outside HTTP's own is ``_OTHER``."""
    unrouted, unknown, odd = Caller.new(), Caller.new(), Caller.new()
    assert httpx.get(f"{traced.url}/wp-admin/{secrets.token_hex(8)}", timeout=10,
                     headers={"traceparent": unrouted.traceparent}).status_code == 404
    assert httpx.post(f"{traced.url}/api/models/{secrets.token_hex(8)}/prediction", json={}, timeout=10,
                      headers={"traceparent": unknown.traceparent}).status_code == 404
    assert httpx.request("PROPFIND", f"{traced.url}/api/models", timeout=10,
                         headers={"traceparent": odd.traceparent}).status_code == 405
    for caller, name in ((unrouted, "GET"), (unknown, "POST"), (odd, "_OTHER /api/models")):
        [server] = [span for span in wait_for_spans(traced.exporter, caller.trace_id) if span.kind is SpanKind.SERVER]
        assert server.name == name


def test_an_http_client_that_leaves_is_cancelled_not_a_server_error(traced: Traced) -> None:
    caller = Caller.new()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{traced.url}/api/models/echo/prediction", json={"x": 1, "text": "slow", "delay_ms": 1500},
                   headers={"traceparent": caller.traceparent, "Cache-Control": "no-cache"}, timeout=0.3)
    [server] = [span for span in wait_for_spans(traced.exporter, caller.trace_id) if span.kind is SpanKind.SERVER]
    assert attrs(server)["hostd.code"] == "CANCELLED" and server.status.status_code is not StatusCode.ERROR


def test_an_operator_s_polls_make_no_spans(traced: Traced) -> None:
    """Probes, scrapes and the dashboard's reading every second would bury the requests in traces."""
    polled = Caller.new()
    for path in ("/api/health", "/api/health/ready", "/v2/health/live", "/metrics", "/api/stats", "/dashboard"):
        answer = httpx.get(f"{traced.url}{path}", headers={"traceparent": polled.traceparent}, timeout=10)
        assert answer.status_code == 200, path
    served = Caller.new()  # answered after the polls: once its span is there, theirs would be too
    answer = httpx.get(f"{traced.url}/api/models", headers={"traceparent": served.traceparent}, timeout=10)
    assert answer.status_code == 200
    wait_for_spans(traced.exporter, served.trace_id)
    assert [span for span in traced.exporter.get_finished_spans() if span.context.trace_id == polled.trace_id] == []
