"""One unary-unary handler shape for every hostd RPC: decode, map errors, count in-flight."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

import betterproto2
from google.protobuf import message_factory
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from hostd_grpc.status import InFlight, grpc_errors

Respond = Callable[[Any, Stream[Any, Any]], Awaitable[Any]]


def unary_handler(respond: Respond, request_type: type, reply_type: type, in_flight: InFlight) -> Handler:
    async def handle(stream: Stream[Any, Any]) -> None:
        with in_flight.track():
            try:
                request = await stream.recv_message()
            except GRPCError:
                raise
            except Exception as exc:  # the codec could not parse the bytes
                raise GRPCError(Status.INVALID_ARGUMENT,
                                f"INVALID_INPUT: request is not a valid {request_type.__name__}: {exc}") from exc
            with grpc_errors():
                reply = await respond(request, stream)
            await stream.send_message(reply)

    return Handler(handle, Cardinality.UNARY_UNARY, request_type, reply_type)


def deadline_s(stream: Stream[Any, Any]) -> float | None:
    return stream.deadline.time_remaining() if stream.deadline is not None else None


class StrictProtoCodec(ProtoCodec):
    """grpclib's codec, but bytes are first checked by google protobuf: betterproto2 silently
    accepts truncated fields and bad wire types, which must be INVALID_ARGUMENT instead."""

    def decode(self, data: bytes, message_type: Any) -> Any:
        descriptor = getattr(message_type, "DESCRIPTOR", None)
        if isinstance(message_type, type) and issubclass(message_type, betterproto2.Message) and descriptor:
            _google_class(descriptor).FromString(data)  # raises DecodeError on malformed bytes
        return super().decode(data, message_type)


@cache
def _google_class(descriptor: Any) -> Any:
    return message_factory.GetMessageClass(descriptor)
