"""Logs (structlog) and metrics (Prometheus), set up explicitly, never at import time."""

from __future__ import annotations

import logging
import logging.config
import sys
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def configure_logging(level: str = "info", fmt: str = "auto", stdlib: dict[str, Any] | None = None) -> None:
    """Console lines on a terminal, JSON lines otherwise (``fmt``: auto | console | json). Libraries
    that log through the standard library (aiokafka, redis, hypercorn, grpclib...) come out in the
    same format, with their logger's name, through structlog's ``ProcessorFormatter``."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    stamped: list[Any] = [structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)]
    if stdlib:
        logging.config.dictConfig(stdlib)  # a rest-model-service `logging:` section: the user's own format
    else:
        handler = logging.StreamHandler(sys.stderr)
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
        self.pending = Gauge("hostd_pending", "Requests admitted and not yet answered", ["model"],
                             registry=self.registry)
        self.models_loaded = Gauge("hostd_models_loaded", "Model versions loaded", registry=self.registry)
        self._answered: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._per_model: dict[str, tuple[Any, Any]] = {}

    def model(self, name: str) -> tuple[Any, Any]:
        """The model's (pending gauge, rows histogram) children, looked up once."""
        children = self._per_model.get(name)
        if children is None:
            children = self._per_model[name] = (self.pending.labels(name), self.rows.labels(name))
        return children

    def answered(self, model: str, transport: str, code: str, seconds: float) -> None:
        """Count one answered request and its latency (the labelled children are looked up once:
        this runs per request)."""
        children = self._answered.get((model, transport, code))
        if children is None:
            children = (self.requests.labels(model, transport, code), self.latency.labels(model, transport))
            self._answered[(model, transport, code)] = children
        children[0].inc()
        children[1].observe(seconds)
