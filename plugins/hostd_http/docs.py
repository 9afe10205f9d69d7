"""/openapi.json built from the models' pydantic schemas, and a Swagger UI page served offline."""

from __future__ import annotations

import html
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hostd import __version__
from hostd.dataplane import DataPlane
from hostd.registry import ServedModel
from hostd_http.responses import ORJSONResponse

# pydantic writes JSON Schema 2020-12, the dialect of OpenAPI 3.1, so the schemas go in unconverted.
# Swagger UI renders 3.1 from version 5 on; deepLinking makes /docs#/models/predict_NAME open one operation.
# The assets' URLs name the Swagger UI version: StaticFiles sends no Cache-Control, so browsers cache them
# for a tenth of their age (the 4.x files were dated 1980) and would keep an old bundle after an upgrade.
OPENAPI_VERSION = "3.1.0"
DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css?v={ui_version}"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js?v={ui_version}"></script>
<script>SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true}});</script>
</body></html>
"""
REF = "#/components/schemas/{model}"
ERROR = {"type": "object", "required": ["type", "messages"],
         "properties": {"type": {"type": "string"}, "messages": {"type": "array", "items": {"type": "string"}}}}
SchemaKey = tuple[Any, JsonSchemaMode]


def openapi(dataplane: DataPlane, title: str, description: str) -> dict[str, Any]:
    served = [model for model in dataplane.models() if model.settings.create_endpoint]
    refs, schemas = _schemas(served)
    paths: dict[str, Any] = {
        "/api/models": {"get": {"operationId": "list_models", "tags": ["service"], "summary": "List the models",
                                "responses": {"200": {"description": "Models"}}}},
        "/api/health/ready": {"get": {"operationId": "readiness", "tags": ["service"], "summary": "Readiness",
                                      "responses": {"200": {"description": "Accepting traffic"},
                                                    "503": {"description": "Refusing traffic"}}}},
        "/v2/models/{name}/infer": {"post": {
            "operationId": "v2_infer", "tags": ["v2"],
            "summary": "Open Inference Protocol v2 inference (also with /versions/{version})",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {"200": {"description": "Output tensors"}}}},
    }
    # The registry yields versions oldest first, so a name's path documents its latest version, the default.
    for model in served:
        paths[f"/api/models/{model.name}/prediction"] = _prediction_path(model, refs)
    return {"openapi": OPENAPI_VERSION,
            "info": {"title": title, "description": description, "version": __version__},
            "paths": paths, "components": {"schemas": {"Error": ERROR, **schemas}}}


def _schemas(served: list[ServedModel]) -> tuple[dict[SchemaKey, Any], dict[str, Any]]:
    # One call for all models, so pydantic gives distinct names to distinct classes that share a name
    # (two packages' `Input`), and to a class whose validation and serialization schemas differ.
    keys: list[SchemaKey] = []
    for model in served:
        keys += [(model.model.input_schema, "validation"), (model.model.output_schema, "serialization")]
    refs, document = models_json_schema(list(dict.fromkeys(keys)), ref_template=REF)
    return refs, document.get("$defs", {})


def _prediction_path(served: ServedModel, refs: dict[SchemaKey, Any]) -> dict[str, Any]:
    def body(schema: dict[str, Any]) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": schema}}}

    error = body({"$ref": REF.format(model="Error")})
    return {"post": {
        "operationId": f"predict_{served.name}",
        "tags": ["models"],
        "summary": f"{served.model.display_name} ({served.version})",
        "description": served.model.description,
        "parameters": [{"name": "version", "in": "query", "required": False, "schema": {"type": "string"}}],
        "requestBody": {"required": True, **body(refs[served.model.input_schema, "validation"])},
        "responses": {
            "200": {"description": "Prediction", **body(refs[served.model.output_schema, "serialization"])},
            "400": {"description": "Invalid input", **error},
            "404": {"description": "Unknown model or version", **error},
            "500": {"description": "The model failed", **error},
            "503": {"description": "Overloaded or not ready", **error},
            "504": {"description": "Timed out", **error},
        },
    }}


def swagger_ui() -> tuple[Path, str]:
    """The swagger-ui-dist build in the flask-swagger-ui wheel, and its version. The package itself
    imports Flask, so it is only located, never imported; its version is the Swagger UI version."""
    spec = importlib.util.find_spec("flask_swagger_ui")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the /docs page needs the Swagger UI assets: pip install flask-swagger-ui")
    return Path(spec.origin).with_name("dist"), importlib.metadata.version("flask-swagger-ui")


def routes(dataplane: DataPlane, title: str, description: str) -> list[Route | Mount]:
    spec = openapi(dataplane, title, description)
    assets, ui_version = swagger_ui()
    page = DOCS_PAGE.format(title=html.escape(title), ui_version=ui_version)

    async def openapi_json(request: Request) -> Response:
        return ORJSONResponse(spec)

    async def docs(request: Request) -> Response:
        return HTMLResponse(page)

    return [
        Route("/openapi.json", openapi_json),
        Route("/docs", docs),
        Mount("/docs/static", StaticFiles(directory=assets), name="docs-static"),
    ]
