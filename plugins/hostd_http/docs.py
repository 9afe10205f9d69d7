"""/openapi.json built from the models' pydantic schemas, and a Swagger UI page served offline."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hostd import __version__
from hostd.dataplane import DataPlane
from hostd.registry import ServedModel
from hostd_http.responses import ORJSONResponse

DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui"}});</script>
</body></html>
"""

ERROR = {"type": "object", "required": ["type", "messages"],
         "properties": {"type": {"type": "string"}, "messages": {"type": "array", "items": {"type": "string"}}}}


def openapi(dataplane: DataPlane, title: str, description: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR}
    paths: dict[str, Any] = {
        "/api/models": {"get": {"summary": "List the models", "responses": {"200": {"description": "Models"}}}},
        "/api/health/ready": {"get": {"summary": "Readiness", "responses": {
            "200": {"description": "Accepting traffic"}, "503": {"description": "Refusing traffic"}}}},
        "/v2/models/{name}/infer": {"post": {
            "summary": "Open Inference Protocol v2 inference (also with /versions/{version})",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {"200": {"description": "Output tensors"}}}},
    }
    for served in dataplane.models():
        if not served.settings.create_endpoint:
            continue
        paths[f"/api/models/{served.name}/prediction"] = _prediction_path(served, schemas)
    return {"openapi": "3.1.0", "info": {"title": title, "description": description, "version": __version__},
            "paths": paths, "components": {"schemas": schemas}}


def _prediction_path(served: ServedModel, schemas: dict[str, Any]) -> dict[str, Any]:
    def ref(schema: Any) -> dict[str, str]:
        json_schema = schema.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(json_schema.pop("$defs", {}))
        schemas[schema.__name__] = json_schema
        return {"$ref": f"#/components/schemas/{schema.__name__}"}

    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {"post": {
        "summary": f"{served.model.display_name} ({served.version})",
        "description": served.model.description,
        "parameters": [{"name": "version", "in": "query", "required": False, "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref(served.model.input_schema)}}},
        "responses": {
            "200": {"description": "Prediction",
                    "content": {"application/json": {"schema": ref(served.model.output_schema)}}},
            "400": {"description": "Invalid input", **error},
            "404": {"description": "Unknown model or version", **error},
            "500": {"description": "The model failed", **error},
            "503": {"description": "Overloaded or not ready", **error},
            "504": {"description": "Timed out", **error},
        },
    }}


def routes(dataplane: DataPlane, title: str, description: str) -> list[Route | Mount]:
    from swagger_ui_bundle import swagger_ui_path

    spec = openapi(dataplane, title, description)

    async def openapi_json(request: Request) -> Response:
        return ORJSONResponse(spec)

    async def docs(request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE.format(title=title))

    return [
        Route("/openapi.json", openapi_json),
        Route("/docs", docs),
        Mount("/docs/static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static"),
    ]
