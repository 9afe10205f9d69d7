"""hostd.tracing: spans for a request's steps in the data plane and the batcher, settings from host.yaml and
the OTEL_* variables, trace ids in log lines and prediction-log records. Every transport's server span is
tested end to end in tests/e2e/test_tracing_transports_e2e.py, the OTLP exporter in test_tracing_otlp_e2e.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from hostd import tracing
from hostd.capture import Capture
from hostd.dataplane import DataPlane
from hostd.errors import InvalidInput, StartupError
from hostd.predictionlog import Record
from hostd.registry import Registry
from hostd.settings import HostSettings
from hostd.tracing import TracingSettings
from tests.support.tracing import spans_in_memory

pytestmark = pytest.mark.anyio
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # the W3C specification's example
CALLER_TRACE, CALLER_SPAN = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with spans_in_memory() as exporter:
        yield exporter


class Log:
    """What a request's records and log lines would carry: the capture's records, kept in memory."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def sampled(self) -> bool:
        return True

    def add(self, record: Record) -> None:
        self.records.append(record)


def plane(batching: bool = True, cache: bool = False, log: Log | None = None) -> DataPlane:
    model: dict[str, Any] = {"class_path": "tests.support.toy:EchoModel"}
    if not batching:
        model["batching"] = {"max_batch_size": 1}
    if cache:
        model["cache"] = {}
    registry = Registry.from_settings(HostSettings.model_validate({"models": [model]}))
    dataplane = DataPlane(registry, capture=Capture(registry, log))  # type: ignore[arg-type]
    dataplane.set_ready()
    return dataplane


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()
            if span.parent is not None and span.parent.span_id == parent.context.span_id}


# --- off -------------------------------------------------------------------------------------------


async def test_off_no_span_is_made_and_every_block_is_the_same_no_op() -> None:
    assert not tracing.enabled()
    assert tracing.serve("x", "http", {"traceparent": CALLER}) is tracing.current(None) is tracing.fan_out([None])
    with tracing.serve("x", "http", {"traceparent": CALLER}) as span, tracing.step("hostd.validate") as step:
        assert span is None and not step and tracing.parents() == () and tracing.trace_id() is None
    assert await plane().predict("echo", {"x": 1, "text": "a"})
    assert tracing.inject({}) == {}


# --- the steps of a request ------------------------------------------------------------------------


async def test_a_request_s_steps_are_children_of_its_server_span_continuing_the_caller(
        spans: InMemorySpanExporter) -> None:
    with tracing.serve("POST /x", "http", {"traceparent": CALLER}) as server:
        await plane().predict("echo", {"x": 1, "text": "a"})
    [root] = by_name(spans)["POST /x"]
    assert root.kind is SpanKind.SERVER and root.context.trace_id == CALLER_TRACE
    assert root.parent is not None and root.parent.span_id == CALLER_SPAN
    steps = children(spans, root)
    assert set(steps) == {"hostd.validate", "hostd.batch_wait", "hostd.model"}
    assert steps["hostd.model"].attributes == {"hostd.model": "echo", "hostd.version": "1.0.0", "hostd.batch.rows": 1,
                                               "hostd.batch.requests": 1}
    assert {key: root.attributes[key] for key in ("hostd.model", "hostd.version")} == {  # type: ignore[index]
        "hostd.model": "echo", "hostd.version": "1.0.0"}, "what the data plane learnt is on the request's span"
    assert root.attributes is not None and root.attributes["hostd.transport"] == "http"
    for step in steps.values():  # inside the request's time
        assert root.start_time <= step.start_time <= step.end_time <= root.end_time  # type: ignore[operator]
    assert server is not None


async def test_requests_batched_together_each_show_the_model_call_they_shared(spans: InMemorySpanExporter) -> None:
    dataplane = plane()

    async def one(index: int) -> None:
        with tracing.serve(f"request {index}", "ws"):
            await dataplane.predict("echo", {"x": index, "text": "a"})

    await asyncio.gather(*(one(index) for index in range(6)))
    roots = {span.name: span for span in spans.get_finished_spans() if span.name.startswith("request")}
    assert len({root.context.trace_id for root in roots.values()}) == 6, "a new trace for each (no traceparent)"
    models = [children(spans, root)["hostd.model"] for root in roots.values()]
    assert sum(model.attributes["hostd.batch.rows"] > 1 for model in models) > 0, "some shared a batch"  # type: ignore[index,operator]


async def test_messages_answered_in_one_call_each_get_their_own_steps(spans: InMemorySpanExporter) -> None:
    """Message 2 is invalid; message 3's caller did not sample its trace (flag 00), so it has no span to keep."""
    log = Log()
    unsampled = {"traceparent": f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-00"}
    messages = [tracing.begin(f"message {index}", "kafka", unsampled if index == 3 else None, kind="consumer")
                for index in range(4)]
    rows = [{"x": 1, "text": "a"}, {"x": "no"}, {"x": 3, "text": "c"}, {"x": 4, "text": "d"}]
    with tracing.fan_out(messages):
        results = await plane(log=log).predict_each("echo", rows, request_ids=["a", "b", "c", "d"])
    for message in messages:
        tracing.end(message, "OK")
    assert isinstance(results[1], InvalidInput)
    found = by_name(spans)
    assert "message 3" not in found
    for index in (0, 1, 2):
        [root] = found[f"message {index}"]
        assert root.kind is SpanKind.CONSUMER
        steps = children(spans, root)
        assert ("hostd.model" in steps) is (index != 1), "the invalid message never reached the model"
        assert "hostd.validate" in steps
    assert [record.trace_id for record in log.records] == [
        format(message.get_span_context().trace_id, "032x") for message in messages[:3]] + [None]  # type: ignore[union-attr]


async def test_a_model_that_does_not_batch_still_shows_its_call(spans: InMemorySpanExporter) -> None:
    with tracing.serve("request", "grpc"):
        await plane(batching=False).predict("echo", {"x": 1, "text": "a"})
    [root] = by_name(spans)["request"]
    assert set(children(spans, root)) >= {"hostd.validate", "hostd.model"}


async def test_the_cache_lookup_says_how_many_rows_it_answered(spans: InMemorySpanExporter) -> None:
    dataplane = plane(cache=True)
    for name in ("first", "second"):
        with tracing.serve(name, "http"):
            await dataplane.predict("echo", {"x": 1, "text": "a"})
    found = by_name(spans)
    first, second = (children(spans, found[name][0]) for name in ("first", "second"))
    assert first["hostd.cache_lookup"].attributes["hostd.cache.hits"] == 0  # type: ignore[index]
    assert second["hostd.cache_lookup"].attributes["hostd.cache.hits"] == 1  # type: ignore[index]
    assert "hostd.model" in first and "hostd.model" not in second


async def test_an_invalid_request_is_its_span_s_outcome(spans: InMemorySpanExporter) -> None:
    with pytest.raises(InvalidInput), tracing.serve("request", "http"):
        await plane().predict("echo", {"x": "not a number"})
    [root] = by_name(spans)["request"]
    assert root.attributes is not None and root.attributes["hostd.code"] == "INVALID_INPUT"
    assert root.status.is_unset, "a client's mistake is not the server's error"
    assert children(spans, root)["hostd.validate"].attributes["error.type"] == "INVALID_INPUT"  # type: ignore[index]


async def test_log_lines_and_records_carry_the_trace_id(spans: InMemorySpanExporter) -> None:
    log = Log()
    with structlog.testing.capture_logs(processors=[tracing.add_trace_id]) as lines, \
            tracing.serve("request", "http", {"traceparent": CALLER}):
        structlog.get_logger("test").info("inside")
        await plane(log=log).predict("echo", {"x": 1, "text": "a"}, request_id="r1")
    structlog.get_logger("test").info("outside")
    # Every line written inside the request names its trace (at info, "inside"; at debug, the data plane's too).
    assert [line["event"] for line in lines][:1] == ["inside"]
    assert {line.get("trace_id") for line in lines} == {format(CALLER_TRACE, "032x")}
    assert [(record.request_id, record.trace_id) for record in log.records] == [("r1", format(CALLER_TRACE, "032x"))]


async def test_an_outgoing_message_carries_the_request_s_trace(spans: InMemorySpanExporter) -> None:
    with tracing.serve("request", "kafka", {"traceparent": CALLER, "tracestate": "vendor=1"}) as span:
        carrier = tracing.inject({})
    assert span is not None
    assert carrier["traceparent"] == f"00-{CALLER_TRACE:032x}-{span.get_span_context().span_id:016x}-01"
    assert carrier["tracestate"] == "vendor=1"


async def test_a_tracestate_that_is_not_the_specification_s_shape_is_left_out(spans: InMemorySpanExporter) -> None:
    """Control characters (a forged log line on a console), too long, too many members: the trace goes on
    without it."""
    for state in ("a=1\n[critical ] FORGED", "a=" + "x" * 600, ",".join(f"k{n}=v" for n in range(40))):
        with tracing.serve("request", "ws", {"traceparent": CALLER, "tracestate": state}) as span:
            carried = tracing.inject({})
        assert span is not None and span.get_span_context().trace_id == CALLER_TRACE
        assert "tracestate" not in carried


async def test_an_attribute_a_client_chose_that_is_no_string_or_number_is_left_out(spans: InMemorySpanExporter) -> None:
    with tracing.serve("request", "arq", **{"hostd.model": {f"k{n}": "x" * 1000 for n in range(3000)}}):
        pass
    [root] = by_name(spans)["request"]
    assert root.attributes is not None and "hostd.model" not in root.attributes


async def test_a_malformed_traceparent_starts_a_new_trace(spans: InMemorySpanExporter) -> None:
    for header in ("garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", b"\xff" * 10, "x" * 10_000):
        with tracing.serve("request", "http", {"traceparent": header}):
            pass
    roots = by_name(spans)["request"]
    assert len(roots) == 4 and all(root.parent is None for root in roots)


# --- settings --------------------------------------------------------------------------------------


def test_off_unless_asked() -> None:
    assert tracing.provider_for(None, {}) is None
    assert tracing.provider_for(TracingSettings(exporter="none"), {"OTEL_TRACES_EXPORTER": "otlp"}) is None
    assert tracing.provider_for(None, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}) is None


@pytest.mark.parametrize(("settings", "environ", "service", "ratio", "endpoint"), [
    # the OTEL_* variables fill what host.yaml leaves out
    (None, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "scoring",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4999/"},
     "scoring", "0.25", "http://127.0.0.1:4999/v1/traces"),
    # host.yaml wins over them
    (TracingSettings(exporter="otlp", endpoint="http://127.0.0.1:4318/custom", sample_ratio=0.5, service_name="fraud"),
     {"OTEL_SERVICE_NAME": "scoring", "OTEL_TRACES_SAMPLER_ARG": "0.1", "OTEL_TRACES_SAMPLER": "traceidratio"},
     "fraud", "0.5", "http://127.0.0.1:4318/custom"),
], ids=["variables-fill-in", "host-yaml-wins"])
def test_settings_come_from_host_yaml_then_the_otel_variables(settings: TracingSettings | None,
                                                              environ: dict[str, str], service: str, ratio: str,
                                                              endpoint: str) -> None:
    provider = tracing.provider_for(settings, environ)
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == service
        assert ratio in provider.sampler.get_description()
        exporter = provider._active_span_processor._span_processors[0].span_exporter  # type: ignore[attr-defined]
        assert exporter._endpoint == endpoint
    finally:
        provider.shutdown()


def test_what_a_client_sent_is_cut_short_in_an_attribute() -> None:
    provider = tracing.provider_for(TracingSettings(exporter="console"), {})
    assert provider is not None
    try:
        span = provider.get_tracer("test").start_span("request", attributes={"url.path": "/" + "a" * 100_000})
        assert len(span.attributes["url.path"]) == 1024  # type: ignore[attr-defined]
    finally:
        provider.shutdown()


@pytest.mark.parametrize(("environ", "says"), [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "'zipkin' is not one hostd has"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "hostd exports OTLP over HTTP"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"},
     "OTEL_TRACES_SAMPLER_ARG must be a number"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "nan"},
     "OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
     "OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "bogus"}, "'bogus' is not one hostd has"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "127.0.0.1:4318"},
     "is not an http:// or https:// URL"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_BSP_SCHEDULE_DELAY": "0"}, "an OTEL_\\* variable has a value"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "abc"}, "an OTEL_\\* variable has a value"),
])
def test_a_setting_hostd_cannot_honour_stops_the_start(environ: dict[str, str], says: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in environ.items():  # the SDK reads some of them from the process's environment itself
        monkeypatch.setenv(name, value)
    with pytest.raises(StartupError, match=says):
        tracing.provider_for(None, environ)


def test_host_yaml_tracing_section_is_checked() -> None:
    one_model = {"models": [{"class_path": "tests.support.toy:EchoModel"}]}
    settings = HostSettings.model_validate({**one_model, "tracing": {"exporter": "otlp", "sample_ratio": 0.1}})
    assert settings.tracing == TracingSettings(exporter="otlp", sample_ratio=0.1)
    with pytest.raises(ValueError, match="sample_ratio"):
        HostSettings.model_validate({**one_model, "tracing": {"sample_ratio": 2}})
    with pytest.raises(ValueError, match="exporterr"):
        HostSettings.model_validate({**one_model, "tracing": {"exporterr": "otlp"}})
