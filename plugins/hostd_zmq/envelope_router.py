"""The JSON envelope over ZeroMQ: REQ clients (strict request/reply) and DEALER clients (pipelined)."""

from __future__ import annotations

from hostd import envelope
from hostd.clients import Client
from hostd.dataplane import DataPlane
from hostd.errors import InvalidInput
from hostd_zmq.router import Respond, Send


def responder(dataplane: DataPlane, max_message_bytes: int) -> Respond:
    async def respond(messages: list[list[bytes]], send: Send, client: Client) -> None:
        routes: list[list[bytes]] = []
        payloads: list[bytes] = []
        for frames in messages:
            # [identity, b"", payload] from REQ (and DEALERs that mimic it), [identity, payload] from DEALER.
            delimited = len(frames) >= 3 and frames[1] == b""
            route, payload = (frames[:2], frames[2:]) if delimited else (frames[:1], frames[1:])
            if len(payload) != 1:
                error = InvalidInput(f"expected one message frame after the routing envelope, got {len(payload)}")
                await send([*route, envelope.encode(envelope.error_reply(None, error))])
                continue
            routes.append(route)
            payloads.append(payload[0])

        async def reply(index: int, answer: bytes) -> None:
            await send([*routes[index], answer])

        await envelope.handle_all(dataplane, payloads, "zmq", reply, max_message_bytes, client)

    return respond
