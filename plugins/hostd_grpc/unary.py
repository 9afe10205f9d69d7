"""One unary-unary handler shape for every hostd RPC: decode, map errors, count in-flight."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from hostd.tasks import InFlight
from hostd_grpc.status import grpc_errors

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
