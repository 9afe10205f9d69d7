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

from hostd.dataplane import DataPlane
from hostd.errors import HostdError, InvalidInput
from hostd_zmq.router import Respond, Send

HEARTBEAT_S = 5.0
IGNORED_EVENTS = {"_zpc_hb", "_zpc_more"}  # channel housekeeping from the client


def responder(dataplane: DataPlane) -> Respond:
    async def respond(frames: list[bytes], send: Send) -> list[bytes] | None:
        route, blob = frames[:-1], frames[-1]
        try:
            header, name, args = msgpack.unpackb(blob, raw=False)
            message_id = header["message_id"]
        except Exception:
            return None  # not a zerorpc event: nothing to answer it with
        if name in IGNORED_EVENTS:
            return None
        if not route or route[-1] != b"":
            route = [*route, b""]
        async with anyio.create_task_group() as tg:
            tg.start_soon(_heartbeat, send, route, message_id)
            status, result = await _call(dataplane, name, args)
            tg.cancel_scope.cancel()
        return [*route, _event(message_id, status, result)]

    return respond


async def _call(dataplane: DataPlane, name: str, args: Any) -> tuple[str, list[Any]]:
    if name == "_zerorpc_list":
        return "OK", [sorted({served.name for served in dataplane.models()})]
    if name == "_zerorpc_ping":
        return "OK", [["pong", "hostd"]]
    try:
        if not isinstance(args, list) or len(args) != 1:
            raise InvalidInput(f"call {name}(data) with one argument, the model's input")
        result = await dataplane.predict(name, args[0], transport="zerorpc")
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
