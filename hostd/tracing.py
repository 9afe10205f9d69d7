"""OpenTelemetry tracing: a server span per request, with child spans for the steps it goes through.

Off by default, and then free: no span object is made, and every function here returns at its first
check. When on (``tracing:`` in host.yaml, or the ``OTEL_*`` variables; the extra ``hostd[tracing]``):

- a transport opens a request's server span with ``serve`` (or ``begin``/``end`` for a message it answers
  later), continuing the caller's W3C ``traceparent``/``tracestate`` from wherever its ecosystem carries
  them: HTTP headers, gRPC metadata, Kafka record headers, an envelope field, an arq job keyword;
- the data plane and the batcher add the steps under it: ``step`` around validation and the cache lookup,
  ``record`` for the wait in the batcher and the model call, timed where they happened;
- a transport that hands many messages to the data plane in one call (a Kafka poll, a pipelined burst:
  ``DataPlane.predict_each``) gives each message its own server span; ``fan_out`` makes them all the
  parents, so each message's trace shows the steps it shared with the others.

The spans are kept in a context variable of our own (``_parents``: one span, or one per message), so
the one-parent and the many-parent cases are the same code; a single request's span is also made
OpenTelemetry's current span, so a model's own instrumentation nests under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = ["TracingSettings", "begin", "current", "end", "fan_out", "inject", "outcome", "parents", "record",
           "serve", "step", "trace_id", "trace_ids"]

# Outcomes that are hostd's failure, not the caller's: the span's status is ERROR (OpenTelemetry's
# convention for server spans: a client's bad request is not the server's error).
SERVER_FAULTS = frozenset({"MODEL_ERROR", "TIMEOUT", "OVERLOADED", "NOT_READY", "INTERNAL"})


class TracingSettings(BaseModel):
    """``tracing:`` in host.yaml. A field left out takes its standard ``OTEL_*`` variable, then the default."""

    model_config = ConfigDict(extra="forbid")
    exporter: Literal["otlp", "console", "none"] | None = None  # OTEL_TRACES_EXPORTER; default none
    endpoint: str | None = None  # OTLP/HTTP; OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, ..._ENDPOINT + /v1/traces
    sample_ratio: float | None = Field(default=None, ge=0, le=1)  # OTEL_TRACES_SAMPLER_ARG; default 1
    service_name: str | None = None  # OTEL_SERVICE_NAME; default hostd


CLOSE_S = 3.0  # the most a stop waits for the last spans to be sent
_tracer: Tracer | None = None
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()  # what every block is when tracing is off
# The current request's span, or each message's (None for one the sampler dropped) in ``fan_out``.
_parents: ContextVar[tuple[Span | None, ...]] = ContextVar("hostd_trace_parents", default=())
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE = re.compile(r"[\x20-\x2b\x2d-\x7e]*(?:,[\x20-\x2b\x2d-\x7e]*){0,31}")  # printable, <= 32 members
MAX_TRACESTATE = 512  # W3C: a vendor may cut it to 512 characters


def provider_for(settings: TracingSettings | None, environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """The tracer provider ``settings`` ask for (None: tracing is off). Raises StartupError, saying what
    to install, when the ``hostd[tracing]`` extra is missing."""
    settings = settings or TracingSettings()
    exporter = settings.exporter or environ.get("OTEL_TRACES_EXPORTER", "none").split(",")[0].strip() or "none"
    if exporter == "none" or environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    from hostd.tracingsetup import make_provider  # imports OpenTelemetry's SDK: only when tracing is on
    return make_provider(settings, exporter, environ)


def enable(provider: TracerProvider, *, for_models: bool = False) -> None:
    """Trace every request from now on, through ``provider`` (the daemon calls this; tests may too).
    ``for_models``: also make it OpenTelemetry's global provider, so a model's own spans (``trace.get_tracer``)
    go to the same place, under the request (the global can be set once a process: the daemon sets it)."""
    global _tracer
    _tracer = provider.get_tracer("hostd")
    if for_models:
        from opentelemetry import trace
        trace.set_tracer_provider(provider)


async def close(provider: TracerProvider, within_s: float = CLOSE_S) -> None:
    """Stop tracing and send the spans still buffered, giving up after ``within_s``: a collector that is down
    would hold the exporter in its retries for its whole timeout (10 s), and hostd's stop with it."""
    disable()
    closing = threading.Thread(target=provider.shutdown, name="hostd-tracing-close", daemon=True)
    closing.start()
    deadline = time.monotonic() + within_s
    while closing.is_alive() and time.monotonic() < deadline:
        await anyio.sleep(0.02)


def flush(provider: TracerProvider, within_s: float) -> None:
    """Send the spans buffered now, waiting at most ``within_s``: the SDK's own ``force_flush`` ignores its
    timeout, and a collector that is down holds it for the exporter's (10 s, and retries)."""
    sending = threading.Thread(target=provider.force_flush, name="hostd-tracing-flush", daemon=True)
    sending.start()
    sending.join(within_s)


def enabled() -> bool:
    return _tracer is not None


def disable() -> None:
    global _tracer
    _tracer = None


def begin(name: str, transport: str, carrier: Mapping[str, Any] | None = None, *, kind: str = "server",
          **attributes: Any) -> Span | None:
    """A request's span, started, not made current (None when tracing is off); ``kind`` is "server", or
    "consumer" for a message taken from a queue (Kafka, arq). Its parent is the caller's context in
    ``carrier`` (``traceparent`` and ``tracestate``), if any. End it with ``end``."""
    if _tracer is None:
        return None
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind
    parent = propagate.extract(_text_carrier(carrier)) if carrier else None
    return _tracer.start_span(name, context=parent, kind=SpanKind.SERVER if kind == "server" else SpanKind.CONSUMER,
                              attributes={"hostd.transport": transport, **_present(attributes)})


def end(span: Span | None, code: str | None = None, **attributes: Any) -> None:
    """End ``span``, first naming its outcome if ``code`` is given (see ``outcome``)."""
    if span is None:
        return
    if code is not None:
        outcome(span, code, **attributes)
    span.end()


def current(span: Span | None) -> contextlib.AbstractContextManager[Span | None]:
    """Make ``span`` the parent of every step (and OpenTelemetry's current span) inside the block."""
    return _OFF if span is None else _current(span)


@contextlib.contextmanager
def _current(span: Span) -> Iterator[Span]:
    from opentelemetry import context, trace
    # A span the sampler dropped gets no steps (each would be another dropped span, ~10 µs apiece), but stays
    # OpenTelemetry's current span, so an outgoing message still carries the trace on (``inject``).
    token = _parents.set((span,) if span.is_recording() else ())
    attached = context.attach(trace.set_span_in_context(span))
    try:
        yield span
    finally:
        context.detach(attached)
        _parents.reset(token)


def serve(name: str, transport: str, carrier: Mapping[str, Any] | None = None, *, kind: str = "server",
          **attributes: Any) -> contextlib.AbstractContextManager[Span | None]:
    """``begin``, ``current`` and ``end`` around a request answered inside the block (None when off). A
    HostdError escaping the block is its outcome; an error answered inside it, tell ``outcome``."""
    return _OFF if _tracer is None else _serve(name, transport, carrier, kind, attributes)


@contextlib.contextmanager
def _serve(name: str, transport: str, carrier: Mapping[str, Any] | None, kind: str,
           attributes: dict[str, Any]) -> Iterator[Span | None]:
    span = begin(name, transport, carrier, kind=kind, **attributes)
    assert span is not None
    span.set_attribute("hostd.code", "OK")  # unless an error is its outcome (below, or ``outcome`` inside)
    try:
        with current(span):
            yield span
    except BaseException as exc:
        outcome(span, code_of(exc))
        raise
    finally:
        end(span)


def outcome(span: Span | None, code: str, **attributes: Any) -> None:
    """Name the request's outcome on its span: ``OK``, an error code or an HTTP status (its status is ERROR
    for hostd's own failures, see SERVER_FAULTS, and a 5xx), with any last attributes."""
    if span is None:
        return
    span.set_attributes({"hostd.code": code, **_present(attributes)})
    if code != "OK":
        span.set_attribute("error.type", code)
    if code in SERVER_FAULTS or (code.isdigit() and int(code) >= 500):  # or an HTTP status
        from opentelemetry.trace import Status, StatusCode
        span.set_status(Status(StatusCode.ERROR, code))


def fan_out(spans: Sequence[Span | None]) -> contextlib.AbstractContextManager[Any]:
    """Make each of ``spans`` (a message's server span each) a parent of every step inside the block. Their
    positions are kept (a span the sampler dropped stands as None), so ``trace_ids`` and the data plane
    can tell which message is which."""
    kept = tuple(span if span is not None and span.is_recording() else None for span in spans)
    return _fan_out(kept) if any(kept) else _OFF


@contextlib.contextmanager
def _fan_out(kept: tuple[Span | None, ...]) -> Iterator[None]:
    token = _parents.set(kept)
    try:
        yield
    finally:
        _parents.reset(token)


def parents() -> tuple[Span | None, ...]:
    """The spans a step started now belongs under, by position (see ``fan_out``); empty when tracing is
    off, or outside a traced request."""
    return _parents.get()


def annotate(**attributes: Any) -> None:
    """Set ``attributes`` on the current request's span(s): what the data plane learns (the model, its
    version, the request id) once the transport has opened the span."""
    for span in _parents.get():
        if span is not None:
            span.set_attributes(_present(attributes))


class _Step:
    """A step of a request: a child span under each parent, from entering the block to leaving it."""

    __slots__ = ("_attributes", "_name", "_parents", "_spans")

    def __init__(self, name: str, under: tuple[Span | None, ...], attributes: dict[str, Any]) -> None:
        self._name, self._parents, self._attributes = name, under, attributes
        self._spans: list[Span] = []

    def __enter__(self) -> _Step:
        from opentelemetry import trace
        assert _tracer is not None
        self._spans = [_tracer.start_span(self._name, context=trace.set_span_in_context(parent),
                                          attributes=self._attributes) for parent in self._parents if parent]
        return self

    def set(self, key: str, value: Any) -> None:
        for span in self._spans:
            span.set_attribute(key, value)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.set("error.type", code_of(exc))
        for span in self._spans:
            span.end()


class _NoStep:
    __slots__ = ()

    def __bool__(self) -> bool:  # ``if step:`` skips work only a recorded span needs
        return False

    def __enter__(self) -> _NoStep:
        return self

    def set(self, key: str, value: Any) -> None:
        pass

    def __exit__(self, *exc_info: Any) -> None:
        pass


_NO_STEP = _NoStep()


def step(name: str, **attributes: Any) -> _Step | _NoStep:
    """A block timed as a child span of the current request(s); a no-op outside one or when off."""
    under = _parents.get()
    return _Step(name, under, attributes) if under else _NO_STEP


def record(name: str, under: Sequence[Span | None], start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A child span of each of ``under`` that has already happened (timed elsewhere, e.g. in the batcher)."""
    if _tracer is None:
        return
    from opentelemetry import trace
    for parent in filter(None, under):
        span = _tracer.start_span(name, context=trace.set_span_in_context(parent), start_time=start_ns,
                                  attributes=attributes)
        span.end(end_time=end_ns)


def now_ns() -> int:
    return time.time_ns()  # OpenTelemetry's clock: span times are Unix nanoseconds


def inject(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """``carrier`` with the current request's ``traceparent`` (and ``tracestate``) added, for an outgoing
    message (a Kafka output record); unchanged when tracing is off or outside a request."""
    if _tracer is not None:
        from opentelemetry import propagate
        propagate.inject(carrier)  # OpenTelemetry's current span: the request's, inside ``current``
    return carrier


def trace_id() -> str | None:
    """The current request's trace id (32 hex digits), for its log lines and its prediction-log record."""
    under = _parents.get()
    return _hex_trace_id(under[0]) if len(under) == 1 and under[0] is not None else None


def trace_ids(count: int) -> list[str | None]:
    """The trace id of each of ``count`` messages answered together (``fan_out``'s spans, in order)."""
    under = _parents.get()
    if len(under) == count:
        return [_hex_trace_id(span) if span is not None else None for span in under]
    return [trace_id()] * count


def add_trace_id(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: a log line written while a request is traced names its trace and span."""
    under = _parents.get()
    if len(under) == 1 and under[0] is not None:
        context = under[0].get_span_context()
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def code_of(exc: BaseException) -> str:
    """A HostdError's code; CANCELLED when the caller left; else INTERNAL."""
    code = getattr(getattr(exc, "code", None), "value", None)
    if isinstance(code, str):
        return code
    return "CANCELLED" if isinstance(exc, asyncio.CancelledError) else "INTERNAL"


def _hex_trace_id(span: Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


def _text_carrier(carrier: Mapping[str, Any]) -> dict[str, str]:
    """The W3C fields of ``carrier`` that have their specification's shape (bytes from Kafka headers
    decoded). Anything else is left out here, quietly: OpenTelemetry's parser would log a warning per
    request for it (a client could fill the log), and a control character could forge a console log line.
    Without a usable ``traceparent`` the request starts a trace of its own."""
    parent, state = (_text(carrier.get(key)) for key in ("traceparent", "tracestate"))
    if parent is None or not _TRACEPARENT.fullmatch(parent.strip()):
        return {}
    if state is None or len(state) > MAX_TRACESTATE or not _TRACESTATE.fullmatch(state):
        return {"traceparent": parent.strip()}
    return {"traceparent": parent.strip(), "tracestate": state}


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value if isinstance(value, str) and len(value) <= 1024 else None


def _present(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes a span can hold as they are: a value a client chose that is not a string or a number
    (a map sent as a model's name) is not one, however big."""
    return {key: value for key, value in attributes.items() if isinstance(value, str | bool | int | float)}
