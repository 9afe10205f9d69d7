"""The JSON envelope shared by the message transports (WebSocket, ZeroMQ, Kafka).

Request ``{"id": "...", "model": "iris_model", "version": null, "data": {...}}`` (``"op"`` defaults to
``"predict"``; ``{"op": "models"}`` and ``{"op": "metadata", "model": ...}`` describe the models).
Reply ``{"id", "model", "version", "prediction"}`` or ``{"id", "error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from hostd.auth import Scope
from hostd.clients import Client
from hostd.dataplane import DataPlane, Prediction
from hostd.errors import HostdError, InvalidInput, PayloadTooLarge

OPS = ("predict", "models", "metadata")


def parse(raw: bytes | str, limit: int | None = None) -> dict[str, Any]:
    """The request as a dict with an ``id`` (one is made up if missing); InvalidInput if it is not one."""
    size = len(raw.encode()) if isinstance(raw, str) else len(raw)
    if limit is not None and size > limit:
        raise PayloadTooLarge(f"message is {size} bytes; the limit is {limit}")
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if isinstance(raw, bytes) and not _is_utf8(raw):
            raise InvalidInput("message is binary, not UTF-8 JSON text") from None
        raise InvalidInput(f"message is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise InvalidInput("message must be a JSON object like {\"id\": ..., \"model\": ..., \"data\": {...}}")
    request.setdefault("id", None)
    if request["id"] is None:
        request["id"] = uuid.uuid4().hex
    return request


async def answer(dataplane: DataPlane, request: dict[str, Any], transport: str,
                 client: Client | None = None) -> dict[str, Any]:
    """The reply to one parsed request (from ``client``, if the transport knows it: see
    ``DataPlane.predict``); every error becomes an error reply."""
    try:
        call = prediction(request)
        permit(dataplane, client, Scope.INFER if call else Scope.READ, call.model if call else request.get("model"))
        if call is None:
            return {"id": request["id"], **_describe(dataplane, request, client)}
        result = await dataplane.predict(call.model, call.data, call.version, transport=transport, client=client)
    except HostdError as exc:
        return error_reply(request.get("id"), exc)
    return prediction_reply(call.id, result)


def permit(dataplane: DataPlane, client: Client | None, scope: Scope, model: Any) -> None:
    """Hold a message from a connection that authenticated once (WebSocket, ZeroMQ CURVE) to its key's
    scopes, models and rate limit. A client with no principal is trusted by its transport (Kafka and
    arq rely on the broker's authentication)."""
    if client is not None and client.principal is not None:
        dataplane.guard.permit(client.principal, scope, model, client.address)


async def handle(dataplane: DataPlane, raw: bytes | str, transport: str, limit: int | None = None,
                 client: Client | None = None) -> bytes:
    """Parse, answer and encode: the whole envelope round trip for one message."""
    try:
        request = parse(raw, limit)
    except HostdError as exc:
        return encode(error_reply(None, exc))
    return encode(await answer(dataplane, request, transport, client))


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def error_reply(request_id: Any, exc: HostdError) -> dict[str, Any]:
    return {"id": request_id, "error": exc.to_dict()}


def encode(reply: dict[str, Any]) -> bytes:
    return orjson.dumps(reply)


@dataclass(frozen=True, slots=True)
class Call:
    """A checked prediction request: which model to call with what."""

    id: Any
    model: str
    version: str | None
    data: Any


def prediction(request: dict[str, Any]) -> Call | None:
    """The prediction ``request`` asks for, or None for an op that describes the models;
    InvalidInput if the request is malformed (an unknown op, no model, no data)."""
    op = request.get("op", "predict")
    if op not in OPS:
        raise InvalidInput(f"unknown op {op!r}; use one of {', '.join(OPS)}")
    if op != "predict":
        return None
    model, version = _target(request)
    if "data" not in request:
        raise InvalidInput("'data' is required (the model's input as a JSON object)")
    return Call(request["id"], model, version, request["data"])


def prediction_reply(request_id: Any, result: Prediction) -> dict[str, Any]:
    return {"id": request_id, "model": result.model, "version": result.version, "prediction": result.output}


def _target(request: dict[str, Any]) -> tuple[str, str | None]:
    model, version = request.get("model"), request.get("version")
    if not isinstance(model, str) or not model:
        raise InvalidInput("'model' is required (a model name)")
    if version is not None and not isinstance(version, str):
        raise InvalidInput("'version' must be a string or null")
    return model, version


def _describe(dataplane: DataPlane, request: dict[str, Any], client: Client | None) -> dict[str, Any]:
    if request.get("op") == "models":
        principal = client.principal if client is not None else None
        return {"models": [served.metadata() for served in dataplane.models()
                           if principal is None or principal.sees(served.name)]}
    model, version = _target(request)
    return {"metadata": dataplane.model(model, version).metadata()}
