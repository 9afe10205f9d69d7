"""/openapi.json describes every route the HTTP app serves, with the errors each can answer in the format
its API uses (plugins/hostd_http/docs.py; issue 13: it described 6 of 21 and no 413)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from hostd_http.app import create_app
from openapi_spec_validator import validate
from starlette.routing import BaseRoute, Mount, Route, Router

from hostd.dataplane import DataPlane
from hostd.registry import Registry
from hostd.settings import HostSettings
from tests.support.e2e import REAL_MODELS, iris_payload

pytestmark = pytest.mark.anyio

MAX_BODY = 4096
MODELS = ["diabetes_model", "digits_model", "iris_model"]
PREDICTION = "/api/models/{name}/prediction"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def settings() -> HostSettings:
    return HostSettings.model_validate({"models": REAL_MODELS})


@pytest.fixture(scope="module")
def dataplane(settings: HostSettings) -> Iterator[DataPlane]:
    registry = Registry.from_settings(settings)
    plane = DataPlane(registry)
    plane.set_ready()
    yield plane
    registry.close()


@pytest.fixture
async def client(dataplane: DataPlane, settings: HostSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(dataplane, settings, max_body=MAX_BODY)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hostd") as http:
        yield http


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    return dict((await client.get("/openapi.json")).json())


def served_routes(routes: list[BaseRoute], prefix: str = "") -> set[tuple[str, str]]:
    """(path, method) of every route the app serves, HEAD left out (Starlette answers it for each GET)."""
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Mount) and route.routes:
            found |= served_routes(route.routes, prefix + route.path)
        elif isinstance(route, Mount):  # an app of its own: the docs' static files
            found.add((f"{prefix}{route.path}/{{path}}", "GET"))
        elif isinstance(route, Route) and isinstance(route.endpoint, Router):  # /v2 itself
            found |= served_routes(route.endpoint.routes, prefix)
        elif isinstance(route, Route):
            found |= {(prefix + route.path, method) for method in route.methods or {"GET"} if method != "HEAD"}
    return found


def documented_routes(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """(path, method) of every operation, each model's prediction path as the route that serves them all."""
    concrete = {PREDICTION.format(name=name): PREDICTION for name in MODELS}
    return {(concrete.get(path, path), method.upper()) for path, item in spec["paths"].items() for method in item}


def iris_tensors() -> list[dict[str, Any]]:
    return [{"name": name, "datatype": "FP64", "shape": [1], "data": [value]} for name, value in iris_payload().items()]


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


async def test_every_route_is_documented(client: httpx.AsyncClient, spec: dict[str, Any]) -> None:
    app = client._transport.app  # type: ignore[attr-defined]
    served = served_routes(app.routes)
    # of which the first document had 6; 4 are the model repository and reload, 2 feedback and quality, 3 the
    # dashboard (its page, its assets, /api/stats)
    assert len(served) == 29
    assert documented_routes(spec) == served
    assert [path for path in spec["paths"] if path.endswith("/prediction")] == [
        PREDICTION.format(name=name) for name in MODELS]


async def test_the_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    validate(spec)
    ids = [operation["operationId"] for _, _, operation in operations(spec)]
    assert len(ids) == len(set(ids))


async def test_every_operation_documents_its_errors_in_its_api_format(spec: dict[str, Any]) -> None:
    for path, _method, operation in operations(spec):
        responses = operation["responses"]
        error = "hostd.V2Error" if path.startswith("/v2") else "hostd.Error"
        # Every route can fail (500) and is refused while the daemon drains (503).
        assert {"500", "503"} <= set(responses), path
        for status in ("500", "413", "504"):
            if status in responses:
                schema = responses[status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": f"#/components/schemas/{error}"}, (path, status)
        if path.endswith(("/prediction", "/infer")):  # predictions and inference read a body and run a model
            assert {"200", "400", "404", "413", "500", "503", "504"} <= set(responses), path
        elif path.endswith(("/load", "/unload", "/reload")):  # admin calls: refused unless admin is enabled
            assert {"200", "400", "403", "500", "503"} <= set(responses), path


def response_schema(spec: dict[str, Any], path: str, status: int) -> dict[str, Any]:
    [operation] = spec["paths"][path].values()
    schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
    return {**schema, "components": spec["components"]}


@pytest.mark.parametrize(("method", "url", "path", "status", "body"), [
    ("POST", "/v2/models/iris_model/infer", "/v2/models/{name}/infer", 413, b"[" * (MAX_BODY + 1)),
    ("POST", "/v2/models/iris_model/infer", "/v2/models/{name}/infer", 400, b'{"inputs": []}'),
    ("POST", "/v2/models/nope/infer", "/v2/models/{name}/infer", 404, b'{"inputs": []}'),
    ("GET", "/v2/models/nope", "/v2/models/{name}", 404, None),
    ("GET", "/v2/models/iris_model/versions/9/ready", "/v2/models/{name}/versions/{version}/ready", 404, None),
    ("POST", "/api/models/iris_model/prediction", "/api/models/iris_model/prediction", 413, b" " * (MAX_BODY + 1)),
    ("POST", "/api/models/iris_model/prediction", "/api/models/iris_model/prediction", 400, b"{}"),
    ("POST", "/api/models/iris_model/prediction?version=9", "/api/models/iris_model/prediction", 404, b"{}"),
    ("GET", "/api/models/nope/metadata", "/api/models/{name}/metadata", 404, None),
    ("GET", "/docs/static/nope.js", "/docs/static/{path}", 404, None),
    ("GET", "/dashboard/static/nope.js", "/dashboard/static/{path}", 404, None),
])
async def test_errors_come_as_documented(client: httpx.AsyncClient, spec: dict[str, Any], method: str, url: str,
                                         path: str, status: int, body: bytes | None) -> None:
    response = await client.request(method, url, content=body)
    assert response.status_code == status, response.text
    jsonschema.validate(response.json(), response_schema(spec, path, status))


async def test_answers_come_as_documented(client: httpx.AsyncClient, spec: dict[str, Any]) -> None:
    for path in ["/api/models", "/api/stats", "/api/health", "/api/health/ready", "/api/health/startup", "/v2",
                 "/v2/health/live", "/v2/health/ready"]:
        response = await client.get(path)
        jsonschema.validate(response.json(), response_schema(spec, path, 200))
    for url, path in [("/api/models/iris_model/metadata", "/api/models/{name}/metadata"),
                      ("/v2/models/iris_model", "/v2/models/{name}"),
                      ("/v2/models/iris_model/versions/1.0.0/ready", "/v2/models/{name}/versions/{version}/ready")]:
        jsonschema.validate((await client.get(url)).json(), response_schema(spec, path, 200))
    inputs = iris_tensors()
    response = await client.post("/v2/models/iris_model/infer", json={"id": "a", "inputs": inputs})
    jsonschema.validate(response.json(), response_schema(spec, "/v2/models/{name}/infer", 200))
    response = await client.post("/api/models/iris_model/prediction", json=iris_payload())
    jsonschema.validate(response.json(), response_schema(spec, "/api/models/iris_model/prediction", 200))


async def test_an_infer_id_that_is_not_a_string_is_refused(client: httpx.AsyncClient) -> None:
    # The reply echoes it, and the documented reply says it is a string.
    inputs = iris_tensors()
    response = await client.post("/v2/models/iris_model/infer", json={"id": 7, "inputs": inputs})
    assert response.status_code == 400 and response.json()["error"] == "'id' must be a string"


async def test_model_schemas_say_what_the_models_take(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert schemas["DiabetesModelInput"]["properties"]["sex"]["enum"] == [1, 2]
    pixel = schemas["DigitsModelInput"]["properties"]["image"]["items"]["items"]
    assert pixel == {"type": "integer", "minimum": 0, "maximum": 16}
