"""The JSON envelope shared by the message transports (WebSocket, ZeroMQ, Kafka).

Request ``{"id": "...", "model": "iris_model", "version": null, "data": {...}}`` (``"op"`` defaults to
``"predict"``; ``"cache": false`` asks for an answer from the model, not its cache; ``{"op": "models"}``
and ``{"op": "metadata", "model": ...}`` describe the models; ``{"op": "feedback", "model": ...,
"request_id": ..., "label": ...}`` gives a prediction's ground truth).
Reply ``{"id", "model", "version", "prediction"}`` (with ``"cached"`` for a model with a cache) or
``{"id", "error": {"code", "message", "details"}}``; the ``id`` (the client's, or one made up) is the
request id the prediction log and feedback know it by.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from hostd import tracing
from hostd.auth import Scope
from hostd.clients import Client
from hostd.dataplane import DataPlane, Prediction, new_request_id
from hostd.errors import HostdError, InvalidInput, PayloadTooLarge

OPS = ("predict", "models", "metadata", "feedback")


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
        request["id"] = new_request_id()
    return request


async def answer(dataplane: DataPlane, request: dict[str, Any], transport: str,
                 client: Client | None = None) -> dict[str, Any]:
    """The reply to one parsed request (from ``client``, if the transport knows it: see
    ``DataPlane.predict``); every error becomes an error reply."""
    try:
        call = prediction(request)
        writes = call is not None or request.get("op") == "feedback"
        permit(dataplane, client, Scope.INFER if writes else Scope.READ, call.model if call else request.get("model"))
        if call is None:
            return {"id": request["id"], **await _other_op(dataplane, request, client)}
        result = await dataplane.predict(call.model, call.data, call.version, transport=transport, client=client,
                                         request_id=call.request_id, use_cache=call.cache)
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
    """Parse, answer and encode: the whole envelope round trip for one message (``handle_all`` for one)."""
    answers: list[bytes] = []

    async def keep(_: int, answer: bytes) -> None:
        answers.append(answer)

    await handle_all(dataplane, [raw], transport, keep, limit, client)
    return answers[0]


#: Sends the answer to the message at an index of ``handle_all``'s list.
Reply = Callable[[int, bytes], Awaitable[None]]


async def handle_all(dataplane: DataPlane, raws: Sequence[bytes | str], transport: str, reply: Reply,
                     limit: int | None = None, client: Client | None = None) -> None:
    """``handle`` for many messages from one client (a burst it pipelined), each answer sent with
    ``reply`` as soon as it is ready. The predictions for a model that batches go to the data plane as
    one call (``predict_each``: one validation pass and one model call, each row still its own answer;
    they wait for each other, as rows of a batch do). For a model that does not batch each runs on its
    own, so one slow request holds up no other."""
    groups: dict[tuple[str, str | None, bool], list[tuple[int, Call]]] = {}
    work: list[Coroutine[Any, Any, None]] = []
    spans: dict[int, Any] = {}  # each traced message's server span, by index (hostd.tracing; empty when off)
    for index, raw in enumerate(raws):
        request: dict[str, Any] = {}
        try:
            request = parse(raw, limit)
            call = prediction(request)
            if call is not None:
                if tracing.enabled():
                    spans[index] = _begin_span(request, transport, call)
                permit(dataplane, client, Scope.INFER, call.model)
                groups.setdefault((call.model, call.version, call.cache), []).append((index, call))
                continue
        except HostdError as exc:
            tracing.end(spans.pop(index, None) or _begin_span(request, transport), exc.code.value)
            dataplane.rejected(transport, exc, request.get("model"))
            await reply(index, encode(error_reply(request.get("id"), exc)))
            continue
        work.append(_answer_one(dataplane, index, request, transport, reply, client))  # another op
    for (model, version, _), calls in groups.items():
        if len(calls) > 1 and _batches(dataplane, model, version):
            work.append(_predict_group(dataplane, model, version, calls, transport, reply, client,
                                       [spans.get(index) for index, _ in calls]))
        else:
            work += [_predict_one(dataplane, index, call, transport, reply, client, spans.get(index))
                     for index, call in calls]
    if len(work) == 1:  # the common cases, one request or one model's burst: no task to make
        await work[0]
        return
    async with asyncio.TaskGroup() as tasks:
        for coroutine in work:
            tasks.create_task(coroutine)


def _batches(dataplane: DataPlane, model: str, version: str | None) -> bool:
    try:
        return dataplane.model(model, version).batcher is not None
    except HostdError:
        return True  # answered per row with the error by predict_each


async def _answer_one(dataplane: DataPlane, index: int, request: dict[str, Any], transport: str, reply: Reply,
                      client: Client | None) -> None:
    span = _begin_span(request, transport)
    with tracing.current(span):
        answered = await answer(dataplane, request, transport, client)
    tracing.end(span, answered["error"]["code"] if "error" in answered else "OK")
    await reply(index, encode(answered))


async def _predict_one(dataplane: DataPlane, index: int, call: Call, transport: str, reply: Reply,
                       client: Client | None, span: Any = None) -> None:
    """One prediction already permitted (answer() would check the key, and take a rate-limit token,
    a second time), under its message's span (if traced)."""
    try:
        with tracing.current(span):
            answered = prediction_reply(call.id, await dataplane.predict(
                call.model, call.data, call.version, transport=transport, client=client, request_id=call.request_id,
                use_cache=call.cache))
        tracing.end(span, "OK")
    except HostdError as exc:
        tracing.end(span, exc.code.value)
        answered = error_reply(call.id, exc)
    await reply(index, encode(answered))


async def _predict_group(dataplane: DataPlane, model: str, version: str | None, calls: list[tuple[int, Call]],
                         transport: str, reply: Reply, client: Client | None, spans: list[Any]) -> None:
    with tracing.fan_out(spans):  # one call for the group, each message's steps under its own span
        results = await dataplane.predict_each(model, [call.data for _, call in calls], version,
                                               transport=transport, client=client,
                                               request_ids=[call.request_id for _, call in calls],
                                               use_cache=calls[0][1].cache)
    for (index, call), result, span in zip(calls, results, spans, strict=True):
        tracing.end(span, result.code.value if isinstance(result, HostdError) else "OK")
        await reply(index, encode(error_reply(call.id, result) if isinstance(result, HostdError)
                                  else prediction_reply(call.id, result)))


def _begin_span(request: dict[str, Any], transport: str, call: Call | None = None) -> Any:
    """A message's server span, continued from its envelope's ``traceparent``/``tracestate`` fields (None
    when tracing is off). Named "{transport} {op}": "ws predict", "zmq metadata"."""
    if not tracing.enabled():
        return None
    op = request.get("op", "predict")
    attributes: dict[str, Any] = {"hostd.model": call.model if call else None,
                                  "hostd.request_id": call.request_id if call else None}
    return tracing.begin(f"{transport} {op if op in OPS else 'message'}", transport, request, **attributes)


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
    cache: bool = True  # False: the client wants the model's answer, not the cache's

    @property
    def request_id(self) -> str:
        """The id as the prediction log and feedback know it (an envelope id may be any JSON value)."""
        return self.id if isinstance(self.id, str) else orjson.dumps(self.id).decode()


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
    cache = request.get("cache", True)
    if not isinstance(cache, bool):
        raise InvalidInput("'cache' must be true or false (false: answer from the model, not its cache)")
    return Call(request["id"], model, version, request["data"], cache)


def prediction_reply(request_id: Any, result: Prediction) -> dict[str, Any]:
    reply = {"id": request_id, "model": result.model, "version": result.version, "prediction": result.output}
    if result.cached is not None:
        reply["cached"] = result.cached
    return reply


def _target(request: dict[str, Any]) -> tuple[str, str | None]:
    model, version = request.get("model"), request.get("version")
    if not isinstance(model, str) or not model:
        raise InvalidInput("'model' is required (a model name)")
    if version is not None and not isinstance(version, str):
        raise InvalidInput("'version' must be a string or null")
    return model, version


async def _other_op(dataplane: DataPlane, request: dict[str, Any], client: Client | None) -> dict[str, Any]:
    """The reply's body for an op that is not a prediction: feedback, or one describing the models."""
    if request.get("op") == "feedback":
        model, _ = _target(request)
        return {"feedback": await dataplane.label(model, request.get("request_id"), request.get("label"))}
    if request.get("op") == "models":
        principal = client.principal if client is not None else None
        return {"models": [served.metadata() for served in dataplane.models()
                           if principal is None or principal.sees(served.name)]}
    model, version = _target(request)
    return {"metadata": dataplane.model(model, version).metadata()}
