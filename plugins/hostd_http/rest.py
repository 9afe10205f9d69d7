"""The rest-model-service API: /api/models..., /api/health..., the dashboard's /api/stats, errors as
{"type", "messages"}."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hostd.dataplane import DataPlane
from hostd.errors import InvalidInput
from hostd.stats import Stats
from hostd.tasks import OFF_LOOP_BYTES, off_loop_if
from hostd_http.connections import client_of, request_id_of, sees
from hostd_http.responses import ORJSONResponse, answer_headers, parse_json, read_body, use_cache


def error_body(code: str, message: str, details: list[Any]) -> dict[str, Any]:
    fields = [f"{d['field']}: {d['message']}" for d in details if isinstance(d, dict) and "field" in d]
    return {"type": code, "messages": fields or [message]}


def routes(dataplane: DataPlane, max_body: int) -> list[Route]:
    """The routes, relative to /api where they are mounted."""

    async def health(request: Request) -> Response:
        return ORJSONResponse({"health_status": "HEALTHY"})

    async def ready(request: Request) -> Response:
        if dataplane.ready:
            return ORJSONResponse({"readiness_status": "ACCEPTING_TRAFFIC"})
        return ORJSONResponse({"readiness_status": "REFUSING_TRAFFIC"}, status_code=503)

    async def startup(request: Request) -> Response:
        # Transports start only after every model has loaded, so answering at all means started.
        return ORJSONResponse({"startup_status": "STARTED"})

    async def list_models(request: Request) -> Response:
        return ORJSONResponse({"models": [_details(served.metadata()) for served in dataplane.models()
                                          if sees(request, served.name)]})

    async def metadata(request: Request) -> Response:
        served = dataplane.model(request.path_params["name"], request.query_params.get("version"))
        return ORJSONResponse(served.metadata())

    async def prediction(request: Request) -> Response:
        with dataplane.refusing("http", request.path_params["name"]):
            body = await read_body(request, max_body)
            data = await off_loop_if(len(body) >= OFF_LOOP_BYTES, parse_json, body)
            if not isinstance(data, dict):
                raise InvalidInput("the request body must be a JSON object of the model's input fields")
        result = await dataplane.predict(request.path_params["name"], data, request.query_params.get("version"),
                                         transport="http", client=client_of(request),
                                         request_id=request_id_of(request.scope), use_cache=use_cache(request))
        # Which version answered: with canary weights, a request without a version may get any of them.
        return ORJSONResponse(result.output, headers=answer_headers(result))

    async def feedback(request: Request) -> Response:
        body = parse_json(await read_body(request, max_body))
        if not isinstance(body, dict):
            raise InvalidInput('the request body must be a JSON object: {"request_id": ..., "label": ...}')
        return ORJSONResponse(await dataplane.label(request.path_params["name"], body.get("request_id"),
                                                    body.get("label")))

    async def quality(request: Request) -> Response:
        feedback = dataplane.capture.feedback
        figures = feedback.quality() if feedback is not None else []
        return ORJSONResponse({"quality": [item for item in figures if sees(request, item["model"])]})

    board = Stats(dataplane.metrics.registry)

    async def stats(request: Request) -> Response:
        # The dashboard's figures (hostd.stats), of the models this key may see, as list_models shows them.
        return ORJSONResponse(board.report(dataplane.repository_index(), lambda model: sees(request, model)))

    async def reload(request: Request) -> Response:
        change = await dataplane.admin().reload()
        return ORJSONResponse(change.to_dict())

    return [  # prediction first: the router tries routes in order
        Route("/models/{name}/prediction", prediction, methods=["POST"]),
        Route("/models/{name}/feedback", feedback, methods=["POST"]),
        Route("/quality", quality),
        Route("/stats", stats),
        Route("/health", health),
        Route("/health/ready", ready),
        Route("/health/startup", startup),
        Route("/models", list_models),
        Route("/models/{name}/metadata", metadata),
        Route("/admin/reload", reload, methods=["POST"]),
    ]


def _details(metadata: dict[str, Any]) -> dict[str, Any]:
    keys = ("display_name", "qualified_name", "description", "version", "deterministic")
    return {key: metadata[key] for key in keys}
