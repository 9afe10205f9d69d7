"""One unary-unary handler shape for every hostd RPC: size check, decode, map errors, count in-flight.

The request is read here rather than with grpclib's ``Stream.recv_message``, which buffers a message
of any size the 5-byte gRPC prefix announces: a message over ``max_request_bytes`` is refused with
RESOURCE_EXHAUSTED ("PAYLOAD_TOO_LARGE: ...") after those 5 bytes, before its body is read (HTTP/2
flow control holds the rest back: see ``server.window_config``). A message over ``OFF_LOOP_BYTES`` is
parsed, and decoded by the RPC (``Call.run``), in a worker thread, so it does not stall other clients.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import Message
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.metadata import Deadline
from grpclib.server import Stream

from hostd import tracing
from hostd.auth import Principal, Scope, bearer_key
from hostd.clients import Client
from hostd.errors import ErrorCode
from hostd.refusals import HELD_BACK
from hostd.tasks import OFF_LOOP_BYTES, InFlight, off_loop_if
from hostd_grpc.server import client_of
from hostd_grpc.status import grpc_errors

if TYPE_CHECKING:
    from hostd.dataplane import DataPlane

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What one request may cost before a handler refuses it (the grpc transport's settings)."""

    max_bytes: int = 1 << 20  # max_request_bytes
    body_timeout_s: float = 10.0  # from the stream's headers to the whole message


DEFAULT_LIMITS = RequestLimits()


@dataclass(frozen=True, slots=True)
class Call:
    """What an RPC needs to know about its call besides the request."""

    size: int = 0  # bytes of the request message
    deadline: Deadline | None = None  # the client's (grpc-timeout), counted from when its headers came
    client: Client | None = None  # the HTTP/2 connection it came on, for per-client admission
    principal: Principal | None = None  # the caller's API key (hostd.auth), when keys are checked

    @property
    def deadline_s(self) -> float | None:
        """What is left of the client's deadline now. Read it when handing the request to the data
        plane, not when the call starts: decoding a big request takes a while, and a budget read
        earlier would outlast the client's deadline, so its cancel would count as CANCELLED, not TIMEOUT."""
        return self.deadline.time_remaining() if self.deadline is not None else None

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)``, in a worker thread if the request is big (CPU work: decoding, encoding)."""
        return await off_loop_if(self.size >= OFF_LOOP_BYTES, work, *args)


Respond = Callable[[Any, Call], Awaitable[Any]]
#: What an RPC needs to be allowed (hostd.auth): the scope, and the model its request names, if any.
Needs = Callable[[Any], tuple[Scope, str | None]]


@dataclass(frozen=True, slots=True)
class Guarded:
    """An RPC's access rule: the data plane's guard checks ``needs(request)`` for the caller's key."""

    dataplane: DataPlane
    needs: Needs
    open_as: str | None = None  # "health": no key needed while auth.open_health is true


def unary_handler(respond: Respond, request_type: type[Message], reply_type: type[Message], in_flight: InFlight,
                  limits: RequestLimits = DEFAULT_LIMITS, guarded: Guarded | None = None) -> Handler:
    async def handle(stream: Stream[Any, Any]) -> None:
        with in_flight.track():
            span = _begin_span(stream)
            try:
                with tracing.current(span):
                    await serve(stream)
                tracing.end(span, "OK")
            except GRPCError as exc:
                tracing.end(span, _code(exc), **{"rpc.grpc.status_code": exc.status.value})
                if isinstance(exc.__cause__, HELD_BACK):  # a client that keeps asking to be refused waits
                    await asyncio.sleep(client_of(stream).refusals.pause_s(asyncio.get_running_loop().time()))
                raise
            except BaseException:
                tracing.end(span, "CANCELLED")  # the client left (grpclib cancels the handler)
                raise

    async def serve(stream: Stream[Any, Any]) -> None:
        guard = guarded.dataplane.guard if guarded is not None else None
        principal = None
        if guard is not None and guarded is not None and guarded.open_as is not None \
                and guard.open_to(guarded.open_as):
            guard = None
        if guard is not None and guard.active:  # the key and its rate limit, before the message is read
            with grpc_errors():
                principal = guard.authenticate(_key(stream))
                peer = stream.peer.addr()
                guard.admit(principal.name if guard.required else f"address {peer[0] if peer else ''}")
        # A client that announces a message and then stalls would otherwise hold its stream (and
        # the drain at shutdown) for ever: the message must arrive within body_timeout_s.
        try:
            async with asyncio.timeout(limits.body_timeout_s):
                body = await receive(stream, limits.max_bytes)
        except TimeoutError:
            raise GRPCError(Status.DEADLINE_EXCEEDED,
                            f"INVALID_INPUT: the request message did not arrive within {limits.body_timeout_s:g} s "
                            "(grpc body_timeout_s)") from None
        call = Call(len(body), stream.deadline, client_of(stream), principal)
        try:
            request = await call.run(request_type.FromString, body)
        except Exception as exc:  # the bytes are not that message
            raise GRPCError(Status.INVALID_ARGUMENT,
                            f"INVALID_INPUT: request is not a valid {request_type.__name__}: {exc}") from exc
        del body
        with grpc_errors():
            if guard is not None and principal is not None and guarded is not None:
                guard.authorize(principal, *guarded.needs(request))
            reply = await respond(request, call)
        await stream.send_message(reply)

    return Handler(handle, Cardinality.UNARY_UNARY, request_type, reply_type)


def _begin_span(stream: Stream[Any, Any]) -> Any:
    """The RPC's server span (None when tracing is off), continued from its ``traceparent`` metadata."""
    if not tracing.enabled():
        return None
    # grpclib keeps the path private (it is in its RecvRequest event, which hostd does not dispatch: see receive)
    service, _, method = stream._method_name.lstrip("/").rpartition("/")
    return tracing.begin(f"{service}/{method}", "grpc", stream.metadata,
                         **{"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})


def _code(exc: GRPCError) -> str:
    """hostd's error code a GRPCError carries ("CODE: message"), else its gRPC status's name."""
    prefix = (exc.message or "").partition(":")[0]
    return prefix if prefix in ErrorCode.__members__ else exc.status.name


def _key(stream: Stream[Any, Any]) -> str | None:
    """The API key of the ``authorization`` metadata ("Bearer <key>", or the key alone)."""
    value = stream.metadata.get("authorization") if stream.metadata is not None else None
    if not isinstance(value, str):
        return None
    return bearer_key(value) or value.strip()


async def receive(stream: Stream[Any, Any], limit: int) -> bytes:
    """The one request message's bytes; refuses one over ``limit`` having read only its prefix.

    Reads from grpclib's ``protocol.Stream`` (``stream._stream``) as grpclib's own ``recv_message``
    does (grpclib/stream.py), with the size check grpclib lacks; request events (``grpclib.events``)
    are not dispatched: hostd listens to none.
    """
    h2_stream = stream._stream
    prefix = await h2_stream.recv_data(5)
    if len(prefix) < 5:
        raise GRPCError(Status.INVALID_ARGUMENT, "INVALID_INPUT: the request has no message")
    compressed, size = struct.unpack(">?I", prefix)
    if compressed:
        raise GRPCError(Status.UNIMPLEMENTED, "INVALID_INPUT: compressed messages are not supported; "
                                              "send the request uncompressed")
    if size > limit:
        raise GRPCError(Status.RESOURCE_EXHAUSTED,
                        f"PAYLOAD_TOO_LARGE: request message is {size} bytes; the limit is {limit} "
                        "(grpc max_request_bytes)")
    try:
        return await h2_stream.recv_data(size)
    except AssertionError:  # grpclib's Buffer: the stream ended before `size` bytes came
        raise GRPCError(Status.INVALID_ARGUMENT,
                        f"INVALID_INPUT: the request ended before the {size} bytes its prefix announced") from None


class GuardedService:
    """A service hostd did not write (grpclib's health and reflection) behind the same guard: every
    call needs a key with ``scope`` (health: unless auth.open_health)."""

    def __init__(self, service: Any, dataplane: DataPlane, scope: Scope, open_as: str | None = None) -> None:
        self.service, self.dataplane, self.scope, self.open_as = service, dataplane, scope, open_as

    def __mapping__(self) -> dict[str, Handler]:
        return {path: Handler(self._guarded(handler.func), handler.cardinality, handler.request_type,
                              handler.reply_type) for path, handler in self.service.__mapping__().items()}

    def _guarded(self, func: Callable[[Stream[Any, Any]], Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def call(stream: Stream[Any, Any]) -> None:
            guard = self.dataplane.guard
            if guard.active and not (self.open_as is not None and guard.open_to(self.open_as)):
                with grpc_errors():
                    peer = stream.peer.addr()
                    guard.check(_key(stream), self.scope, peer=peer[0] if peer else "")
            await func(stream)

        return call
