"""Open Inference Protocol v2 REST (KServe v2 / Triton), with Triton's binary tensor extension."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hostd import __version__
from hostd.dataplane import DataPlane
from hostd.errors import InvalidInput
from hostd.registry import ServedModel
from hostd.tasks import OFF_LOOP_BYTES, off_loop_if
from hostd.tensors import TensorSpec, check_outputs, tensor_specs
from hostd_http.connections import client_of, request_id_of, sees
from hostd_http.responses import ORJSONResponse, answer_headers, parse_json, read_body, use_cache
from hostd_http.tensors import decode_inputs, encode_outputs, parameters

HEADER_LENGTH = "inference-header-content-length"


def error_body(code: str, message: str, details: list[Any]) -> dict[str, Any]:
    return {"error": message, "code": code, "details": details}


async def server_metadata(request: Request) -> Response:
    return ORJSONResponse({"name": "hostd", "version": __version__,
                           "extensions": ["binary_tensor_data", "model_repository"]})


def model_metadata(served: ServedModel, versions: list[str]) -> dict[str, Any]:
    return {
        "name": served.name,
        "versions": versions,
        "platform": "hostd",
        "inputs": [spec.metadata() for spec in tensor_specs(served.model.input_schema)],
        "outputs": [spec.metadata() for spec in tensor_specs(served.model.output_schema)],
        "parameters": {"deterministic": served.deterministic},
    }


def routes(dataplane: DataPlane, max_body: int) -> list[Route]:
    """The routes under /v2/, relative to it (server metadata, at /v2 itself, is ``server_metadata``)."""

    async def live(request: Request) -> Response:
        return ORJSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return ORJSONResponse({"ready": dataplane.ready}, status_code=200 if dataplane.ready else 503)

    async def metadata(request: Request) -> Response:
        served = _served(request)
        versions = [m.version for m in dataplane.models() if m.name == served.name]
        return ORJSONResponse(model_metadata(served, versions))

    async def model_ready(request: Request) -> Response:
        served = _served(request)
        ok = dataplane.ready and served.settings.create_endpoint
        return ORJSONResponse({"name": served.name, "ready": ok}, status_code=200 if ok else 400)

    async def infer(request: Request) -> Response:
        served = _served(request)
        output_specs = tensor_specs(served.model.output_schema)
        with dataplane.refusing("http", served.name):
            body = await read_body(request, max_body)
            # Parsing and decoding 1 MB of tensors takes ~0.3 s of CPU: a big body is decoded in a thread.
            inference, requested, rows = await off_loop_if(len(body) >= OFF_LOOP_BYTES, _decode, body,
                                                           request.headers.get(HEADER_LENGTH), served, output_specs)
        # The data plane picks the version that answers: the one asked for, else by routing (a reload
        # or a canary may have changed it since ``served`` gave the tensors to decode).
        # The request id: X-Request-Id if the client sent one, else the body's id, else one made up.
        request_id = request_id_of(request.scope, inference.get("id"))
        result = await dataplane.predict_many(served.name, rows, request.path_params.get("version"), transport="http",
                                              deadline_s=_deadline_s(inference), client=client_of(request),
                                              request_id=request_id, use_cache=use_cache(request))
        binary_default = bool(parameters(inference, "the request").get("binary_data_output", False))
        tensors, chunks = encode_outputs(result.outputs, output_specs, requested, binary_default)
        reply: dict[str, Any] = {"model_name": result.model, "model_version": result.version, "outputs": tensors}
        if "id" in inference:
            reply["id"] = inference["id"]
        if result.cached is not None:
            reply["parameters"] = {"cached": result.cached}
        if not chunks:
            return ORJSONResponse(reply, headers=answer_headers(result))
        header = orjson.dumps(reply)
        return Response(header + b"".join(chunks), media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(header)), **answer_headers(result)})

    def _served(request: Request) -> ServedModel:
        return dataplane.model(request.path_params["name"], request.path_params.get("version"))

    async def repository_index(request: Request) -> Response:
        query = await _optional_json(request, max_body)
        ready_only = query.get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidInput("'ready' must be true or false")
        index = dataplane.repository_index(ready_only)
        return ORJSONResponse([entry for entry in index if sees(request, entry["name"])])

    async def load(request: Request) -> Response:
        await _optional_json(request, max_body)  # {"parameters": {...}}: none is needed
        await dataplane.admin().load(request.path_params["name"])
        return Response(status_code=200)

    async def unload(request: Request) -> Response:
        await _optional_json(request, max_body)
        await dataplane.admin().unload(request.path_params["name"])
        return Response(status_code=200)

    infer_routes: list[Route] = []
    model_routes: list[Route] = []
    for prefix in ("/models/{name}", "/models/{name}/versions/{version}"):
        infer_routes.append(Route(prefix + "/infer", infer, methods=["POST"]))
        model_routes += [Route(prefix, metadata), Route(prefix + "/ready", model_ready)]
    return [  # inference first: the router tries routes in order
        *infer_routes,
        Route("/health/live", live),
        Route("/health/ready", ready),
        *model_routes,
        # The OIP model repository extension, as Triton and MLServer serve it.
        Route("/repository/index", repository_index, methods=["POST"]),
        Route("/repository/models/{name}/load", load, methods=["POST"]),
        Route("/repository/models/{name}/unload", unload, methods=["POST"]),
    ]


async def _optional_json(request: Request, limit: int) -> dict[str, Any]:
    """A repository call's JSON body: an object, or nothing at all."""
    body = await read_body(request, limit)
    if not body.strip():
        return {}
    parsed = parse_json(body)
    if not isinstance(parsed, dict):
        raise InvalidInput("the request body must be a JSON object")
    return parsed


def _decode(body: bytes, header_length: str | None, served: ServedModel, output_specs: list[TensorSpec],
            ) -> tuple[dict[str, Any], dict[str, bool], list[dict[str, Any]]]:
    """An infer request's JSON, the outputs it asks for, and its rows."""
    request_json, binary = _split(body, header_length)
    inference = parse_json(request_json)
    if not isinstance(inference, dict):
        raise InvalidInput("the request body must be a JSON object with 'inputs'")
    if not isinstance(inference.get("id", ""), str):  # echoed in the reply, whose schema says string
        raise InvalidInput("'id' must be a string")
    requested = _requested_outputs(inference, output_specs)
    return inference, requested, decode_inputs(inference, binary, tensor_specs(served.model.input_schema))


def _split(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view):]
    # isdecimal, not isdigit: "\xb2" (superscript two) is a digit that int() refuses.
    if not header_length.isdecimal() or int(header_length) > len(body):
        raise InvalidInput(f"Inference-Header-Content-Length {header_length!r} does not fit the body "
                           f"({len(body)} bytes)")
    return view[:int(header_length)], view[int(header_length):]


def _requested_outputs(inference: dict[str, Any], output_specs: list[TensorSpec]) -> dict[str, bool]:
    outputs = inference.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise InvalidInput("'outputs' must be a list of {\"name\": ...} objects")
    requested = {o["name"]: bool(parameters(o, f"output '{o['name']}'").get("binary_data", False)) for o in outputs}
    check_outputs(requested, output_specs)
    return requested


def _deadline_s(inference: dict[str, Any]) -> float | None:
    timeout_us = parameters(inference, "the request").get("timeout")
    if isinstance(timeout_us, bool) or not isinstance(timeout_us, (int, float)) or timeout_us <= 0:
        return None
    return timeout_us / 1_000_000
