"""AWS Lambda: hostd's HTTP API (the same Starlette app as the HTTP transport) behind mangum.

Handler: ``hostd_lambda.handler.handler``. It answers API Gateway REST API (payload v1), HTTP API
(v2) and Function URL events with the same routes and error codes as ``hostd run``. The models in
the config named by ``HOSTD_CONFIG`` (default: ``host.yaml`` in the function's root,
``$LAMBDA_TASK_ROOT``) load once per cold start, at import, inside Lambda's init phase. If they
cannot load, the function still starts and answers every request 503 NOT_READY with the reason,
instead of failing its init with a stack trace nobody calling it sees.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from hostd_http.app import compose, create_app
from hostd_http.plugin import HttpSettings
from mangum import Mangum
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hostd import plugins, tracing
from hostd.capture import Capture
from hostd.configfile import load_settings
from hostd.dataplane import DataPlane
from hostd.errors import ConfigError, NotReady, StartupError, describe
from hostd.feedback import Feedback
from hostd.observability import Metrics, configure_logging
from hostd.registry import Registry

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = structlog.get_logger("hostd.lambda")
FLUSH_S = 0.5  # the most an invocation waits for its spans to be sent (Lambda's default timeout is 3 s)


def default_config() -> Path:
    return Path(os.environ.get("HOSTD_CONFIG") or Path(os.environ.get("LAMBDA_TASK_ROOT", ".")) / "host.yaml")


def create_handler(config: Path | str, base_path: str | None = None) -> Mangum | Flushing:
    """Load the models in ``config`` and wrap the HTTP app for Lambda (lifespan off: nothing to start).
    ``base_path`` (default: $HOSTD_LAMBDA_BASE_PATH, else "/") is a prefix API Gateway leaves on the
    path, e.g. the stage of an HTTP API or a custom domain's base path mapping: it is stripped."""
    base_path = base_path or os.environ.get("HOSTD_LAMBDA_BASE_PATH") or "/"
    try:
        known = {name: transport.settings for name, transport in plugins.transports(plugins.plugin_manager()).items()}
        settings = load_settings(config, known)  # checks the http section as `hostd run` does
        registry = Registry.from_settings(settings)
        provider = tracing.provider_for(settings.tracing)
    except (ConfigError, OSError, StartupError) as exc:
        reason = str(exc) if isinstance(exc, ConfigError) else describe(exc)
        log.error("models failed to load", config=str(config), error=reason)
        return Mangum(unavailable(f"hostd could not load its models: {reason}"), lifespan="off",
                      api_gateway_base_path=base_path)
    # Feedback and the cache live as long as the warm container; the prediction log needs a task that
    # outlives a request, which Lambda freezes between invocations: it is not kept here.
    if settings.prediction_log is not None:
        log.warning("prediction_log is not kept on Lambda (its writer would be frozen between invocations)")
    metrics = Metrics()
    feedback = Feedback(settings.feedback, metrics) if settings.feedback is not None else None
    dataplane = DataPlane(registry, metrics, capture=Capture(registry, feedback=feedback))
    dataplane.set_ready()
    http = settings.transports.get("http") or HttpSettings()
    app = Mangum(create_app(dataplane, settings, http.max_request_bytes), lifespan="off",
                 api_gateway_base_path=base_path)
    if provider is None:
        return app
    tracing.enable(provider)
    return Flushing(app, provider)


class Flushing:
    """The handler when tracing is on: each invocation's spans are exported before it returns, since Lambda
    freezes the container between invocations (and the exporter's thread with it)."""

    def __init__(self, app: Mangum, provider: TracerProvider) -> None:
        self.app, self.provider = app, provider

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        try:
            return self.app(event, context)
        finally:
            tracing.flush(self.provider, FLUSH_S)


def unavailable(reason: str) -> Starlette:
    """Every route answers 503 NOT_READY with ``reason``, in the route's own error format."""

    async def refuse(request: Request) -> Response:
        raise NotReady(reason)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    everything = [Route("/{path:path}", refuse, methods=methods)]
    return compose(api=everything, oip=everything, oip_root=everything, other=everything)


configure_logging(os.environ.get("HOSTD_LOG_LEVEL", "info"), "json")  # CloudWatch gets JSON lines
handler = create_handler(default_config())
