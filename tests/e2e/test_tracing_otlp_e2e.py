"""The real exporter path: a `hostd run` process with `tracing: {exporter: otlp}` sends its spans over OTLP/HTTP
to a small collector the test starts, which decodes them with opentelemetry-proto, as a collector would. The
same request's log lines and prediction-log record carry its trace id."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import HostdProcess
from tests.support.e2e import wait_for

pytestmark = pytest.mark.e2e
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"  # the W3C specification's example
CALLER = "00f067aa0ba902b7"
IRIS = {"class_path": "iris_model.model:IrisModel"}
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


class Collector:
    """An OTLP/HTTP trace receiver: every span exported to it, with its service's name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Span]] = []
        self.content_types: set[str] = set()
        collector = self

        class Receive(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                collector.content_types.add(self.headers["content-type"])
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    service = next(attribute.value.string_value for attribute in resource_spans.resource.attributes
                                   if attribute.key == "service.name")
                    for scope_spans in resource_spans.scope_spans:
                        collector.spans += [(service, span) for span in scope_spans.spans]
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Receive)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def of_trace(self, trace_id: str) -> list[tuple[str, Span]]:
        return [(service, span) for service, span in self.spans if span.trace_id.hex() == trace_id]


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    thread = threading.Thread(target=receiver.server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        thread.join(5)
        receiver.server.server_close()


def attributes(span: Span) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for attribute in span.attributes:
        value = attribute.value
        found[attribute.key] = getattr(value, value.WhichOneof("value"))
    return found


def test_a_request_s_spans_reach_an_otlp_collector_with_its_trace_in_the_logs_and_the_prediction_log(
        start_hostd: Callable[..., HostdProcess], collector: Collector, tmp_path: Path) -> None:
    server = start_hostd({
        "models": [IRIS], "log_level": "debug",
        "tracing": {"exporter": "otlp", "endpoint": collector.url, "service_name": "hostd-e2e"},
        "prediction_log": {"sink": "file", "path": str(tmp_path / "log")},
    }, env={"OTEL_BSP_SCHEDULE_DELAY": "100"})  # export within 0.1 s instead of the SDK's 5 s
    reply = httpx.post(f"{server.url}/api/models/iris_model/prediction", json=SETOSA, timeout=10,
                       headers={"traceparent": f"00-{TRACE}-{CALLER}-01", "x-request-id": "traced-1"})
    assert reply.status_code == 200, reply.text
    wait_for(lambda: {span.name for _, span in collector.of_trace(TRACE)} >= {
        "POST /api/models/{name}/prediction", "hostd.validate", "hostd.batch_wait", "hostd.model"},
        "the request's four spans at the collector")

    spans = collector.of_trace(TRACE)
    assert {service for service, _ in spans} == {"hostd-e2e"}
    assert collector.content_types == {"application/x-protobuf"}
    [root] = [span for _, span in spans if span.name == "POST /api/models/{name}/prediction"]
    assert root.parent_span_id.hex() == CALLER and root.kind == Span.SPAN_KIND_SERVER
    assert attributes(root) | {"url.path": "/api/models/iris_model/prediction"} == {
        "hostd.transport": "http", "http.request.method": "POST", "http.route": "/api/models/{name}/prediction",
        "url.path": "/api/models/iris_model/prediction", "hostd.code": "OK", "http.response.status_code": 200,
        "hostd.request_id": "traced-1", "hostd.model": "iris_model", "hostd.version": "1.0.0"}
    children = {span.name: span for _, span in spans if span.parent_span_id == root.span_id}
    assert set(children) == {"hostd.validate", "hostd.batch_wait", "hostd.model"}
    assert attributes(children["hostd.model"])["hostd.batch.rows"] == 1

    lines = [orjson.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "predicted" and line.get("trace_id") == TRACE for line in lines), \
        "the request's log line names its trace"
    server.stop()
    [record] = [orjson.loads(line) for path in (tmp_path / "log").glob("*.jsonl")
                for line in path.read_bytes().splitlines()]
    assert (record["request_id"], record["trace_id"]) == ("traced-1", TRACE)


def test_a_model_s_own_span_and_log_line_belong_to_the_request(start_hostd: Callable[..., HostdProcess],
                                                               collector: Collector) -> None:
    server = start_hostd({"models": [{"class_path": "tests.support.toy:TracedEcho"}],
                          "tracing": {"exporter": "otlp", "endpoint": collector.url}},
                         env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
    reply = httpx.post(f"{server.url}/api/models/echo/prediction", json={"x": 1, "text": "a"}, timeout=10,
                       headers={"traceparent": f"00-{TRACE}-{CALLER}-01"})
    assert reply.status_code == 200, reply.text
    wait_for(lambda: "toy.predict_batch" in {span.name for _, span in collector.of_trace(TRACE)},
             "the model's own span at the collector")
    spans = {span.name: span for _, span in collector.of_trace(TRACE)}
    assert spans["toy.predict_batch"].parent_span_id == spans["POST /api/models/{name}/prediction"].span_id
    lines = [orjson.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    [called] = [line for line in lines if line.get("event") == "toy model called"]
    assert called["trace_id"] == TRACE


def test_spans_still_buffered_are_sent_when_hostd_stops(start_hostd: Callable[..., HostdProcess],
                                                        collector: Collector) -> None:
    server = start_hostd({"models": [IRIS], "tracing": {"exporter": "otlp", "endpoint": collector.url}},
                         env={"OTEL_BSP_SCHEDULE_DELAY": "60000"})  # nothing is sent on the SDK's own schedule
    for _ in range(3):
        assert httpx.post(f"{server.url}/api/models/iris_model/prediction", json=SETOSA, timeout=10,
                          headers={"traceparent": f"00-{TRACE}-{CALLER}-01"}).status_code == 200
    assert collector.of_trace(TRACE) == []
    assert server.stop() == 0
    roots = [span for service, span in collector.of_trace(TRACE) if span.kind == Span.SPAN_KIND_SERVER]
    assert len(roots) == 3 and {service for service, _ in collector.of_trace(TRACE)} == {"hostd"}


def test_a_collector_that_is_down_costs_no_request(start_hostd: Callable[..., HostdProcess]) -> None:
    server = start_hostd({"models": [IRIS], "tracing": {"exporter": "otlp", "endpoint": "http://127.0.0.1:9/v1/traces"}},
                         env={"OTEL_BSP_SCHEDULE_DELAY": "50"})
    for _ in range(20):
        assert httpx.post(f"{server.url}/api/models/iris_model/prediction", json=SETOSA, timeout=10).status_code == 200
    assert server.stop(timeout=10) == 0  # the last export gives up after tracing.CLOSE_S, not its 10 s timeout
