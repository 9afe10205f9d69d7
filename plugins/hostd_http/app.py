"""The Starlette application: rest-model-service routes, OIP v2 routes, /metrics and docs."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hostd.dataplane import DataPlane
from hostd.errors import HostdError
from hostd.settings import HostSettings
from hostd_http import docs, rest, v2


def create_app(dataplane: DataPlane, host: HostSettings, max_body: int = 1 << 20) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(dataplane.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def on_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HostdError)
        if request.url.path.startswith("/v2"):
            return v2.v2_error(exc)
        return rest.rest_error(exc)

    return Starlette(
        routes=[
            *rest.routes(dataplane, max_body),
            *v2.routes(dataplane, max_body),
            *docs.routes(dataplane, host.service_title, host.description),
            Route("/metrics", metrics),
        ],
        exception_handlers={HostdError: on_error},
    )
