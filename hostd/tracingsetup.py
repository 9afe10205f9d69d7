"""Building the OpenTelemetry tracer provider that ``tracing:`` (or the ``OTEL_*`` variables) ask for.
Imported only when tracing is on: OpenTelemetry's SDK is the optional extra ``hostd[tracing]``."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from urllib.parse import urlsplit

from hostd.errors import StartupError
from hostd.tracing import TracingSettings

try:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
except ImportError:  # pragma: no cover - exercised by an install without the extra
    raise StartupError("tracing needs OpenTelemetry's SDK: pip install 'hostd[tracing]'") from None

ATTRIBUTE_CHARS = 1024
OTLP_DEFAULT = "http://localhost:4318/v1/traces"  # OpenTelemetry's own default for OTLP over HTTP


def make_provider(settings: TracingSettings, exporter: str, environ: Mapping[str, str]) -> TracerProvider:
    """A provider sampling ``sample_ratio`` of the new traces (a caller's sampled flag is kept: a trace is
    whole or absent), exporting in batches off the event loop through ``exporter`` (otlp or console)."""
    ratio = settings.sample_ratio if settings.sample_ratio is not None else _env_ratio(environ)
    name = settings.service_name or environ.get("OTEL_SERVICE_NAME") or "hostd"
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES (deployment.environment=..., and so on).
    # An attribute a client chose (a URL path, a request id) is cut at ATTRIBUTE_CHARS unless
    # OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT says otherwise: a span stays small whatever was sent.
    limit = environ.get("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT") or environ.get("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT")
    span_exporter = _exporter(settings, exporter, environ)
    try:  # the SDK reads its own OTEL_* variables here (OTEL_BSP_*, the span limits) and refuses bad ones
        provider = TracerProvider(resource=Resource.create({"service.name": name}),
                                  sampler=ParentBased(TraceIdRatioBased(ratio)),
                                  span_limits=SpanLimits(max_attribute_length=None if limit else ATTRIBUTE_CHARS))
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    except ValueError as exc:
        raise StartupError(f"tracing: an OTEL_* variable has a value OpenTelemetry refuses: {exc}") from None
    # What a client sent (a tracestate member, a long path) is not worth a warning a request: it is cut or
    # left out quietly. The exporter's own failures still say so, once a batch.
    for name in ("opentelemetry.trace.span", "opentelemetry.attributes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return provider


def _exporter(settings: TracingSettings, exporter: str, environ: Mapping[str, str]) -> SpanExporter:
    if exporter == "console":
        return ConsoleSpanExporter(service_name=settings.service_name)
    if exporter != "otlp":
        raise StartupError(f"tracing exporter {exporter!r} is not one hostd has; use otlp, console or none")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol not in (None, "", "http/protobuf"):
        raise StartupError(f"OTLP protocol {protocol!r} is not supported; hostd exports OTLP over HTTP "
                           "(http/protobuf, port 4318 on a collector)")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    endpoint = settings.endpoint or _env_endpoint(environ)
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StartupError(f"tracing endpoint {endpoint!r} is not an http:// or https:// URL (OTLP over HTTP, "
                           "e.g. http://127.0.0.1:4318/v1/traces)")
    return OTLPSpanExporter(endpoint=endpoint)


def _env_endpoint(environ: Mapping[str, str]) -> str:
    if traces := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return traces  # used as it is, as the specification says
    if base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return base.rstrip("/") + "/v1/traces"
    return OTLP_DEFAULT


SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio")


def _env_ratio(environ: Mapping[str, str]) -> float:
    """The share of new traces OTEL_TRACES_SAMPLER asks for. A caller's sampled flag is followed whichever
    it names (hostd's sampler is parent-based, so a trace is whole or absent)."""
    sampler = environ.get("OTEL_TRACES_SAMPLER", "") or "parentbased_always_on"
    if sampler not in SAMPLERS:
        raise StartupError(f"OTEL_TRACES_SAMPLER={sampler!r} is not one hostd has; use one of {', '.join(SAMPLERS)}")
    if sampler.endswith("always_off"):
        return 0.0
    if not sampler.endswith("traceidratio"):
        return 1.0
    try:
        ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1"))
    except ValueError:
        ratio = math.nan
    if not 0.0 <= ratio <= 1.0:  # also NaN
        raise StartupError("OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1")
    return ratio
