"""Logs (structlog) and metrics (Prometheus), set up explicitly, never at import time."""

from __future__ import annotations

import logging
import logging.config
import sys
import threading
from types import TracebackType
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hostd import tracing

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def configure_logging(level: str = "info", fmt: str = "auto", stdlib: dict[str, Any] | None = None) -> None:
    """Console lines on a terminal, JSON lines otherwise (``fmt``: auto | console | json). Libraries
    that log through the standard library (aiokafka, redis, hypercorn, grpclib...) come out in the
    same format, with their logger's name, through structlog's ``ProcessorFormatter``; so do the
    warnings and tracebacks Python would print raw (see ``_route_last_resort_output``)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    stamped: list[Any] = [structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                          tracing.add_trace_id]
    if stdlib:
        logging.config.dictConfig(stdlib)  # a rest-model-service `logging:` section: the user's own format
    else:
        handler = _Handler(sys.stderr)
        handler.setFormatter(structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*stamped, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info, renderer],
        ))
        root = logging.getLogger()
        root.handlers = [handler]
        root.setLevel(level.upper())
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *stamped, structlog.processors.format_exc_info,
                    renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_last_resort_output()


def _route_last_resort_output() -> None:
    """Send what Python itself prints raw to stderr through the log, one line each in its format:
    warnings (a model's library warns), an exception nothing caught (in the main thread or another),
    and one raised where nothing can catch it (``__del__``, a finalizer: "Exception ignored in")."""
    logging.captureWarnings(True)  # on the "py.warnings" logger
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread
    sys.unraisablehook = _unraisable


def _last_resort() -> Any:
    return structlog.get_logger("hostd.python")  # looked up each time: these are rare, and configure_logging reruns


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    _last_resort().critical("uncaught exception", exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return  # a thread that exits this way is not an error (threading's own hook says nothing either)
    thread = args.thread.name if args.thread is not None else None
    _last_resort().error("uncaught exception in a thread", thread=thread,
                         exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _unraisable(args: Any) -> None:  # sys.UnraisableHookArgs
    _last_resort().error(args.err_msg or "Exception ignored", object=repr(args.object),
                         exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


class _Handler(logging.StreamHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        # A record that cannot be formatted (a library's message with the wrong arguments): logging
        # would print "--- Logging error ---" and a traceback, raw. Say so in one line instead.
        _last_resort().error("a log record could not be formatted", logger=record.name, msg=repr(record.msg),
                             args=repr(record.args), exc_info=sys.exc_info())


class Metrics:
    """Every hostd metric, registered on the ``CollectorRegistry`` it is given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "hostd_requests", "Predictions answered, by model, transport and outcome code",
            ["model", "transport", "code"], registry=self.registry,
        )
        self.latency = Histogram(
            "hostd_request_duration_seconds", "Time from admission to answer", ["model", "transport"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.rows = Histogram(
            "hostd_request_rows", "Rows per prediction call", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024), registry=self.registry,
        )
        self.batch_rows = Histogram(
            "hostd_batch_rows", "Rows per model call (one predict_batch: the requests a batcher ran together)",
            ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024), registry=self.registry,
        )
        self.pending = Gauge("hostd_pending", "Requests admitted and not yet answered", ["model"],
                             registry=self.registry)
        self.models_loaded = Gauge("hostd_models_loaded", "Model versions loaded", registry=self.registry)
        pair = ["model", "primary", "shadow"]  # a shadow's labels: the model and the two versions
        self.shadow_requests = Counter(
            "hostd_shadow_requests", "Requests mirrored to a shadow version, by outcome (compared, failed, "
            "dropped: the shadow queue was full)", [*pair, "outcome"], registry=self.registry)
        self.shadow_rows = Counter(
            "hostd_shadow_rows", "Rows whose non-float outputs agree or disagree between primary and shadow",
            [*pair, "agreement"], registry=self.registry)
        self.shadow_difference = Histogram(
            "hostd_shadow_abs_difference", "Absolute difference of each float output, shadow vs primary", pair,
            buckets=(0, 1e-9, 1e-6, 1e-3, 0.01, 0.1, 1, 10, 100, 1000), registry=self.registry)
        self.shadow_latency = Histogram(
            "hostd_shadow_latency_difference_seconds", "Shadow latency minus primary latency", pair,
            buckets=(-1, -0.1, -0.01, -0.001, 0, 0.001, 0.01, 0.1, 1), registry=self.registry)
        version = ["model", "version"]
        self.cache_lookups = Counter("hostd_cache_lookups", "Rows looked up in the prediction cache, by result "
                                     "(hit, miss)", [*version, "result"], registry=self.registry)
        self.cache_evictions = Counter("hostd_cache_evictions", "Entries the memory cache let go to stay within "
                                       "its bound", version, registry=self.registry)
        self.cache_entries = Gauge("hostd_cache_entries", "Entries in the memory cache", version,
                                   registry=self.registry)
        self.cache_bytes = Gauge("hostd_cache_bytes", "Bytes the memory cache holds, as counted against max_bytes",
                                 version, registry=self.registry)
        self.cache_errors = Counter("hostd_cache_errors", "Redis cache calls that failed (each turns the cache "
                                    "off for a second)", version, registry=self.registry)
        self.log_records = Counter("hostd_prediction_log_records", "Prediction log records, by outcome (written; "
                                   "dropped: the buffer was full or the sink failed)", ["outcome"],
                                   registry=self.registry)
        self.log_buffered = Gauge("hostd_prediction_log_buffered", "Records waiting for the sink",
                                  registry=self.registry)
        self.feedback = Counter("hostd_feedback", "Ground-truth labels received, by outcome (joined; unknown: "
                                "no such request id, or it expired; duplicate: labelled already; invalid: not "
                                "comparable with the output)",
                                ["model", "outcome"], registry=self.registry)
        self.quality = Gauge("hostd_model_quality", "Live quality over the last labelled predictions: accuracy "
                             "(classifiers), mae and rmse (regressors)", [*version, "metric"], registry=self.registry)
        self.quality_labels = Gauge("hostd_model_quality_labels", "Labels in the quality window", version,
                                    registry=self.registry)
        self._answered: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._per_model: dict[str, tuple[Any, Any]] = {}
        self._batches: dict[str, Any] = {}

    def model(self, name: str) -> tuple[Any, Any]:
        """The model's (pending gauge, rows histogram) children, looked up once."""
        children = self._per_model.get(name)
        if children is None:
            children = self._per_model[name] = (self.pending.labels(name), self.rows.labels(name))
        return children

    def batch(self, name: str) -> Any:
        """The model's rows-per-model-call histogram child, looked up once (this runs per batch)."""
        child = self._batches.get(name)
        if child is None:
            child = self._batches[name] = self.batch_rows.labels(name)
        return child

    def answered(self, model: str, transport: str, code: str, seconds: float) -> None:
        """Count one answered request and its latency (the labelled children are looked up once:
        this runs per request)."""
        children = self._answered.get((model, transport, code))
        if children is None:
            children = (self.requests.labels(model, transport, code), self.latency.labels(model, transport))
            self._answered[(model, transport, code)] = children
        children[0].inc()
        children[1].observe(seconds)
