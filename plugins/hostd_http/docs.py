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
from hostd.stats import SCHEMA as STATS
from hostd.tensors import DATATYPES
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
SchemaKey = tuple[Any, JsonSchemaMode]
Json = dict[str, Any]

# hostd's own components, named so that no model's schema (pydantic names them after their class) takes
# the name: component names may hold dots, Python class names may not.
REST_ERROR, V2_ERROR = "hostd.Error", "hostd.V2Error"
V2_REQUEST, V2_RESPONSE, V2_TENSOR = "hostd.V2InferenceRequest", "hostd.V2InferenceResponse", "hostd.V2Tensor"
V2_METADATA, MODEL_DETAILS = "hostd.V2ModelMetadata", "hostd.ModelDetails"
STRINGS = {"type": "array", "items": {"type": "string"}}
ANY_OBJECT = {"type": "object"}


def _object(required: list[str], **properties: Json) -> Json:
    return {"type": "object", "required": required, "properties": properties}


def _ref(name: str) -> Json:
    return {"$ref": REF.format(model=name)}


_TENSOR_METADATA = _object(["name", "datatype", "shape"], name={"type": "string"}, datatype={"type": "string"},
                           shape={"type": "array", "items": {"type": "integer"}})
COMPONENTS: dict[str, Json] = {
    # The author's API (rest-model-service): /api, /docs, /metrics and anything unrouted.
    REST_ERROR: _object(["type", "messages"], type={"type": "string"}, messages=STRINGS),
    # OIP v2 (/v2): KServe's {"error"}, with hostd's code and details.
    V2_ERROR: _object(["error", "code", "details"], error={"type": "string"}, code={"type": "string"},
                      details={"type": "array"}),
    MODEL_DETAILS: _object(["display_name", "qualified_name", "description", "version", "deterministic"],
                           display_name={"type": "string"}, qualified_name={"type": "string"},
                           description={"type": "string"}, version={"type": "string"},
                           deterministic={"type": "boolean"}),
    V2_TENSOR: _object(["name", "datatype", "shape"], name={"type": "string"},
                       datatype={"enum": sorted(DATATYPES)},
                       shape={"type": "array", "items": {"type": "integer", "minimum": 0}},
                       parameters=ANY_OBJECT,
                       data={"description": "The values, row-major, flat or nested (or binary_data_size in "
                                            "parameters, for Triton's binary tensor extension)"}),
    V2_REQUEST: _object(["inputs"], id={"type": "string"}, parameters=ANY_OBJECT,
                        inputs={"type": "array", "minItems": 1, "items": _ref(V2_TENSOR)},
                        outputs={"type": "array", "items": _object(["name"], name={"type": "string"},
                                                                    parameters=ANY_OBJECT)}),
    V2_RESPONSE: _object(["model_name", "model_version", "outputs"], model_name={"type": "string"},
                         model_version={"type": "string"}, id={"type": "string"},
                         outputs={"type": "array", "items": _object(
                             ["name", "datatype", "shape"], name={"type": "string"}, datatype={"type": "string"},
                             shape={"type": "array", "items": {"type": "integer"}}, data={"type": "array"},
                             parameters=ANY_OBJECT)}),
    V2_METADATA: _object(["name", "versions", "platform", "inputs", "outputs"], name={"type": "string"},
                         versions=STRINGS, platform={"type": "string"},
                         inputs={"type": "array", "items": _TENSOR_METADATA},
                         outputs={"type": "array", "items": _TENSOR_METADATA}, parameters=ANY_OBJECT),
}
#: What each error status means, whichever route answers it.
ERRORS = {
    400: "Invalid input: the messages say what is wrong",
    403: "Admin calls are off (admin: {enabled: true} turns them on)",
    404: "No such model or version (or path)",
    413: "Request body over the size limit (max_request_bytes)",
    500: "The model failed, or hostd did (its log says why)",
    503: "Overloaded (retry after Retry-After seconds), or not ready: starting or shutting down",
    504: "Timed out",
}


def _content(media_type: str, schema: Json) -> Json:
    return {"content": {media_type: {"schema": schema}}}


def _json(schema: Json) -> Json:
    return _content("application/json", schema)


def _responses(error: str, ok: dict[str, Json], *statuses: int) -> Json:
    """``ok``, and the errors in ``statuses`` plus 500 and 503 (every route: a bug, a draining server),
    with ``error``'s body."""
    errors = {str(status): {"description": ERRORS[status], **_json(_ref(error))}
              for status in sorted({*statuses, 500, 503})}
    return {**errors, **ok}


def _ok(description: str, schema: Json, media_type: str = "application/json") -> dict[str, Json]:
    return {"200": {"description": description, **_content(media_type, schema)}}


def _path_parameter(name: str, values: list[str] | None = None) -> Json:
    schema: Json = {"type": "string", "enum": values} if values else {"type": "string"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


VERSION_QUERY = {"name": "version", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "A version of the model (default: its latest)"}


def _get(operation_id: str, tag: str, summary: str, responses: Json, parameters: list[Json] | None = None) -> Json:
    operation: Json = {"operationId": operation_id, "tags": [tag], "summary": summary, "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    return {"get": operation}


def openapi(dataplane: DataPlane, title: str, description: str) -> dict[str, Any]:
    """The OpenAPI document of every route the HTTP transport serves (each GET also answers HEAD)."""
    served = [model for model in dataplane.models() if model.settings.create_endpoint]
    refs, schemas = _schemas(served)
    names = sorted({model.name for model in served})
    # The registry yields versions oldest first, so a name's path documents its latest version, the default.
    predictions = {f"/api/models/{model.name}/prediction": _prediction_path(model, refs) for model in served}
    return {"openapi": OPENAPI_VERSION,
            "info": {"title": title, "description": description, "version": __version__},
            "paths": {**_api_paths(names), **predictions, **_v2_paths(names), **_other_paths()},
            "components": {"schemas": {**COMPONENTS, **schemas}}}


def _api_paths(names: list[str]) -> Json:
    def status(field: str, *values: str) -> Json:
        return _object([field], **{field: {"enum": list(values)}})

    readiness = status("readiness_status", "ACCEPTING_TRAFFIC")
    refusing = {"anyOf": [status("readiness_status", "REFUSING_TRAFFIC"), _ref(REST_ERROR)]}
    metadata = {**COMPONENTS[MODEL_DETAILS]}
    metadata["required"] = [*metadata["required"], "input_schema", "output_schema"]
    metadata["properties"] = {**metadata["properties"], "input_schema": ANY_OBJECT, "output_schema": ANY_OBJECT}
    return {
        "/api/models": _get("list_models", "service", "List the models", _responses(
            REST_ERROR, _ok("Models", _object(["models"], models={"type": "array",
                                                                   "items": _ref(MODEL_DETAILS)})))),
        "/api/models/{name}/metadata": _get("model_metadata", "service", "A model's metadata and schemas",
                                            _responses(REST_ERROR, _ok("Metadata", metadata), 404),
                                            [_path_parameter("name", names), VERSION_QUERY]),
        "/api/health": _get("health", "service", "Liveness", _responses(
            REST_ERROR, _ok("Alive", status("health_status", "HEALTHY")))),
        "/api/health/ready": _get("readiness", "service", "Readiness", {
            **_responses(REST_ERROR, _ok("Accepting traffic", readiness)),
            "503": {"description": "Refusing traffic: starting or shutting down", **_json(refusing)}}),
        "/api/health/startup": _get("startup", "service", "Start-up", _responses(
            REST_ERROR, _ok("Every model has loaded", status("startup_status", "STARTED")))),
        "/api/models/{name}/feedback": {"post": {
            "operationId": "feedback", "tags": ["service"], "parameters": [_path_parameter("name", names)],
            "summary": "The ground truth of a prediction, by its request id (X-Request-Id): live quality per version",
            "requestBody": {"required": True, **_json(_object(["request_id", "label"], request_id={"type": "string"},
                                                              label={}))},
            "responses": _responses(REST_ERROR, _ok("Joined with its prediction, or not (unknown or too old)", _object(
                ["request_id", "model", "joined"], request_id={"type": "string"}, model={"type": "string"},
                version={"type": "string"}, joined={"type": "boolean"}, reason={"type": "string"})), 400, 403, 404)}},
        "/api/quality": _get("quality", "service", "Live quality of each labelled model version", _responses(
            REST_ERROR, _ok("Accuracy (classifiers) or MAE and RMSE (regressors) over the last labels", _object(
                ["quality"], quality={"type": "array", "items": ANY_OBJECT})))),
        "/api/stats": _get("stats", "service", "The dashboard's figures: model states; per model and transport, "
                           "requests since start, and requests/s, p50/p99 latency and error shares of late",
                           _responses(REST_ERROR, _ok("The figures of the models the key may see", STATS))),
        "/api/admin/reload": {"post": {
            "operationId": "reload", "tags": ["service"],
            "summary": "Re-read the config and the model repository and apply the difference (as SIGHUP does)",
            "responses": _responses(REST_ERROR, _ok("What changed, by model name", _object(
                ["loaded", "reloaded", "unloaded", "failed"], loaded=STRINGS, reloaded=STRINGS, unloaded=STRINGS,
                failed={"type": "object", "additionalProperties": {"type": "string"}})), 400, 403)}},
    }


def _v2_paths(names: list[str]) -> Json:
    paths: Json = {
        "/v2": _get("v2_server_metadata", "v2", "Server metadata", _responses(V2_ERROR, _ok("Server metadata", _object(
            ["name", "version", "extensions"], name={"type": "string"}, version={"type": "string"},
            extensions=STRINGS)))),
        "/v2/health/live": _get("v2_live", "v2", "Server liveness", _responses(
            V2_ERROR, _ok("Live", _object(["live"], live={"type": "boolean"})))),
        "/v2/health/ready": _get("v2_ready", "v2", "Server readiness", {
            **_responses(V2_ERROR, _ok("Ready", _object(["ready"], ready={"type": "boolean"}))),
            "503": {"description": "Not ready: starting or shutting down", **_json(
                {"anyOf": [_object(["ready"], ready={"type": "boolean"}), _ref(V2_ERROR)]})}}),
    }
    model_ready = _object(["name", "ready"], name={"type": "string"}, ready={"type": "boolean"})
    for prefix, suffix, parameters in [
        ("/v2/models/{name}", "", [_path_parameter("name", names)]),
        ("/v2/models/{name}/versions/{version}", "_version",
         [_path_parameter("name", names), _path_parameter("version")]),
    ]:
        paths[prefix] = _get(f"v2_model_metadata{suffix}", "v2", "Model metadata: its input and output tensors",
                             _responses(V2_ERROR, _ok("Model metadata", _ref(V2_METADATA)), 404), parameters)
        paths[prefix + "/ready"] = _get(f"v2_model_ready{suffix}", "v2", "Model readiness", {
            **_responses(V2_ERROR, _ok("Ready", model_ready), 404),
            "400": {"description": "Loaded but not served (create_endpoint: false)", **_json(model_ready)}},
            parameters)
        paths[prefix + "/infer"] = {"post": _infer(suffix, parameters)}
    return {**paths, **_repository_paths()}


def _repository_paths() -> Json:
    """The OIP model repository extension (as Triton and MLServer serve it)."""
    entry = _object(["name", "version", "state", "reason"], name={"type": "string"}, version={"type": "string"},
                    state={"enum": ["READY", "UNAVAILABLE", "LOADING", "UNLOADING"]}, reason={"type": "string"})
    index_body = {"type": "object", "properties": {"ready": {"type": "boolean"}}}
    change_body = {"type": "object", "properties": {"parameters": ANY_OBJECT}}

    def post(operation_id: str, summary: str, body: Json, responses: Json, parameters: list[Json] | None = None,
             ) -> Json:
        operation: Json = {"operationId": operation_id, "tags": ["v2"], "summary": summary, "responses": responses,
                           "requestBody": {"required": False, "content": {"application/json": {"schema": body}}}}
        if parameters:
            operation["parameters"] = parameters
        return {"post": operation}

    name = [_path_parameter("name")]
    done = {"200": {"description": "Done"}}
    return {
        "/v2/repository/index": post("v2_repository_index", "Every model the repository knows, with its state",
                                     index_body, _responses(V2_ERROR, _ok("The index", {"type": "array",
                                                                                       "items": entry}), 400, 413)),
        "/v2/repository/models/{name}/load": post(
            "v2_repository_load", "Load a model, or reload it (the new version serves before the old one leaves)",
            change_body, _responses(V2_ERROR, done, 400, 403, 404, 413), name),
        "/v2/repository/models/{name}/unload": post(
            "v2_repository_unload", "Unload a model: admitted requests finish, then it is closed",
            change_body, _responses(V2_ERROR, done, 400, 403, 404, 413), name),
    }


def _infer(suffix: str, parameters: list[Json]) -> Json:
    header = {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
              "schema": {"type": "integer", "minimum": 0},
              "description": "Binary tensor extension: the length of the JSON part; the tensors' bytes follow it"}
    binary = {"type": "string", "format": "binary"}
    return {
        "operationId": f"v2_infer{suffix}", "tags": ["v2"], "summary": "Open Inference Protocol v2 inference",
        "description": "One tensor per input field (first dimension: rows) or, for a model whose inputs are "
                       "all numbers, one [rows, fields] tensor. GET /v2/models/{name} lists the tensors.",
        "parameters": [*parameters, header],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(V2_REQUEST)},
                                                       "application/octet-stream": {"schema": binary}}},
        "responses": _responses(V2_ERROR, {"200": {
            "description": "Output tensors (with the binary tensor extension: JSON, then the tensors' bytes)",
            "content": {"application/json": {"schema": _ref(V2_RESPONSE)},
                        "application/octet-stream": {"schema": binary}}}}, 400, 404, 413, 504),
    }


def _other_paths() -> Json:
    text = {"type": "string"}
    return {
        "/openapi.json": _get("openapi", "service", "This document", _responses(
            REST_ERROR, _ok("OpenAPI 3.1", ANY_OBJECT))),
        "/docs": _get("docs", "service", "Swagger UI", _responses(REST_ERROR, _ok("The page", text, "text/html"))),
        "/docs/static/{path}": _get("docs_static", "service", "The Swagger UI page's assets", _responses(
            REST_ERROR, _ok("An asset", text, "*/*"), 404), [_path_parameter("path")]),
        "/dashboard": _get("dashboard", "service", "The live dashboard (draws /api/stats)", _responses(
            REST_ERROR, _ok("The page", text, "text/html"))),
        "/dashboard/static/{path}": _get("dashboard_static", "service", "The dashboard's script and style", _responses(
            REST_ERROR, _ok("An asset", text, "*/*"), 404), [_path_parameter("path")]),
        "/metrics": _get("metrics", "service", "Prometheus metrics", _responses(
            REST_ERROR, _ok("Metrics, Prometheus text format", text, "text/plain"))),
        "/": _get("root", "service", "Redirect to /docs", _responses(REST_ERROR, {"307": {
            "description": "To /docs", "headers": {"Location": {"schema": {"type": "string"}}}}})),
    }


def _schemas(served: list[ServedModel]) -> tuple[dict[SchemaKey, Any], dict[str, Any]]:
    # One call for all models, so pydantic gives distinct names to distinct classes that share a name
    # (two packages' `Input`), and to a class whose validation and serialization schemas differ.
    keys: list[SchemaKey] = []
    for model in served:
        keys += [(model.model.input_schema, "validation"), (model.model.output_schema, "serialization")]
    refs, document = models_json_schema(list(dict.fromkeys(keys)), ref_template=REF)
    return refs, document.get("$defs", {})


def _prediction_path(served: ServedModel, refs: dict[SchemaKey, Any]) -> dict[str, Any]:
    return {"post": {
        "operationId": f"predict_{served.name}",
        "tags": ["models"],
        "summary": f"{served.model.display_name} ({served.version})",
        "description": served.model.description,
        "parameters": [VERSION_QUERY],
        "requestBody": {"required": True, **_json(refs[served.model.input_schema, "validation"])},
        "responses": _responses(REST_ERROR, {"200": {
            "description": "Prediction", **_json(refs[served.model.output_schema, "serialization"]),
            "headers": {"X-Model-Version": {"description": "The version that answered",
                                            "schema": {"type": "string"}},
                        "X-Request-Id": {"description": "The request's id (the client's, or one made up)",
                                         "schema": {"type": "string"}},
                        "X-Cache": {"description": "HIT or MISS, for a model with a cache",
                                    "schema": {"enum": ["HIT", "MISS"]}}}}},
            400, 404, 413, 504),
    }}


def swagger_ui() -> tuple[Path, str]:
    """The swagger-ui-dist build in the flask-swagger-ui wheel, and its version. The package itself
    imports Flask, so it is only located, never imported; its version is the Swagger UI version."""
    spec = importlib.util.find_spec("flask_swagger_ui")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the /docs page needs the Swagger UI assets: pip install flask-swagger-ui")
    return Path(spec.origin).with_name("dist"), importlib.metadata.version("flask-swagger-ui")


def routes(dataplane: DataPlane, title: str, description: str) -> list[Route | Mount]:
    built: dict[int, Json] = {}  # the document for the registry's generation: rebuilt when models change
    assets, ui_version = swagger_ui()
    page = DOCS_PAGE.format(title=html.escape(title), ui_version=ui_version)

    async def openapi_json(request: Request) -> Response:
        generation = dataplane.registry.generation
        if generation not in built:
            built.clear()
            built[generation] = openapi(dataplane, title, description)
        return ORJSONResponse(built[generation])

    async def docs(request: Request) -> Response:
        return HTMLResponse(page)

    return [
        Route("/openapi.json", openapi_json),
        Route("/docs", docs),
        Mount("/docs/static", StaticFiles(directory=assets), name="docs-static"),
    ]
