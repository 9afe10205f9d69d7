"""The zerorpc wire protocol, so ``zerorpc.Client().iris_model(data)`` calls a model.

Each model is a zerorpc method named after it. An event is one msgpack frame
``[{"message_id", "v": 3, "response_to"?}, name, args]`` after the routing envelope; the reply is
``"OK", [result]`` or ``"ERR", [error_name, message, traceback]``, the error name being hostd's code
(``INVALID_INPUT``, ``MODEL_NOT_FOUND`` ...). While a call runs, a ``_zpc_hb``
heartbeat goes out every ``HEARTBEAT_S`` so the client does not give up (zerorpc's LostRemote).
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import msgpack

from hostd import envelope, tracing
from hostd.auth import Scope
from hostd.clients import Client
from hostd.dataplane import DataPlane
from hostd.errors import HostdError, InvalidInput, PayloadTooLarge
from hostd_zmq.router import Respond, Send

HEARTBEAT_S = 5.0
ZERORPC_CALLS = frozenset({"_zerorpc_ping", "_zerorpc_list"})  # what a zerorpc client asks besides a model
IGNORED_EVENTS = {"_zpc_hb", "_zpc_more"}  # channel housekeeping from the client


def responder(dataplane: DataPlane, max_message_bytes: int | None = None) -> Respond:
    async def respond(messages: list[list[bytes]], send: Send, client: Client) -> None:
        # Each call on its own: a zerorpc call is one model request, answered as soon as it is done.
        async with anyio.create_task_group() as tg:
            for frames in messages:
                tg.start_soon(respond_one, frames, send, client)

    async def respond_one(frames: list[bytes], send: Send, client: Client) -> None:
        reply = await answer(frames, send, client)
        if reply is not None:
            await send(reply)

    async def answer(frames: list[bytes], send: Send, client: Client) -> list[bytes] | None:
        route, blob = frames[:-1], frames[-1]
        if not route or route[-1] != b"":
            route = [*route, b""]
        try:
            header, name, args = _unpack(blob, max_message_bytes)
        except Malformed as exc:  # answered, though a client that sent no message_id cannot match it
            dataplane.rejected("zerorpc", exc.error)
            return [*route, _event(exc.message_id, "ERR", [exc.error.code.value, exc.error.message, ""])]
        if name in IGNORED_EVENTS:
            return None
        message_id = header["message_id"]
        # A trace is continued from the event header's traceparent (a zerorpc client middleware's
        # client_before_request can put it there).
        # zerorpc's own calls by their name; a model's name is the client's choice: an attribute, not the name.
        call = name if name in ZERORPC_CALLS else "predict"
        attributes: dict[str, Any] = {"hostd.model": name} if call == "predict" else {}
        with tracing.serve(f"zerorpc {call}", "zerorpc", header, **attributes) as span:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_heartbeat, send, route, message_id)
                status, result = await _call(dataplane, name, args, client, message_id)
                tg.cancel_scope.cancel()
            tracing.outcome(span, status if status == "OK" else result[0])
        return [*route, _event(message_id, status, result)]

    return respond


class Malformed(Exception):
    """Not a zerorpc event: the error to answer it with, and its message_id if it had one."""

    def __init__(self, error: HostdError, message_id: Any = None) -> None:
        super().__init__(error.message)
        self.error, self.message_id = error, message_id


def _unpack(blob: bytes, limit: int | None) -> tuple[dict[Any, Any], str, Any]:
    """An event's header (with a message_id), name and arguments."""
    if limit is not None and len(blob) > limit:
        raise Malformed(PayloadTooLarge(f"event is {len(blob)} bytes; the limit is {limit}"))
    try:
        event = msgpack.unpackb(blob, raw=False)
    except Exception:
        raise Malformed(InvalidInput("not a zerorpc event: the frame is not msgpack")) from None
    if not isinstance(event, list) or len(event) != 3 or not isinstance(event[0], dict):
        raise Malformed(InvalidInput("not a zerorpc event: expected [header, name, args], the header a map"))
    header, name, args = event
    if "message_id" not in header:
        raise Malformed(InvalidInput("the event's header has no message_id"))
    if not isinstance(name, str):
        raise Malformed(InvalidInput(f"the event's name must be a string (a model's name), not "
                                     f"{type(name).__name__}"), header["message_id"])
    return header, name, args


async def _call(dataplane: DataPlane, name: str, args: Any, client: Client | None,
                message_id: Any) -> tuple[str, list[Any]]:
    if name == "_zerorpc_ping":
        return "OK", [["pong", "hostd"]]
    try:
        if name == "_zerorpc_list":
            envelope.permit(dataplane, client, Scope.READ, None)
            principal = client.principal if client is not None else None
            return "OK", [sorted({served.name for served in dataplane.models()
                                  if principal is None or principal.sees(served.name)})]
        with dataplane.refusing("zerorpc", name):
            envelope.permit(dataplane, client, Scope.INFER, name)
            if not isinstance(args, list) or len(args) != 1:
                raise InvalidInput(f"call {name}(data) with one argument, the model's input")
        # The request id: the event's message_id, which the reply's response_to repeats.
        request_id = message_id.decode(errors="replace") if isinstance(message_id, bytes) else str(message_id)
        result = await dataplane.predict(name, args[0], transport="zerorpc", client=client, request_id=request_id)
    except HostdError as exc:  # zerorpc.RemoteError's name is the error code, as in every transport
        return "ERR", [exc.code.value, exc.message, ""]
    return "OK", [result.output]


async def _heartbeat(send: Send, route: list[bytes], message_id: Any) -> None:
    while True:
        await anyio.sleep(HEARTBEAT_S)
        await send([*route, _event(message_id, "_zpc_hb", [0])])


def _event(response_to: Any, name: str, args: list[Any]) -> bytes:
    header = {"message_id": uuid.uuid4().hex.encode(), "v": 3, "response_to": response_to}
    return msgpack.packb([header, name, args], use_bin_type=True)
