"""hostd error codes -> gRPC status codes, and the in-flight RPC count used to drain."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from hostd.errors import ErrorCode, HostdError

STATUS = {
    ErrorCode.INVALID_INPUT: Status.INVALID_ARGUMENT,
    ErrorCode.MODEL_NOT_FOUND: Status.NOT_FOUND,
    ErrorCode.PAYLOAD_TOO_LARGE: Status.RESOURCE_EXHAUSTED,
    ErrorCode.OVERLOADED: Status.RESOURCE_EXHAUSTED,
    ErrorCode.NOT_READY: Status.UNAVAILABLE,
    ErrorCode.TIMEOUT: Status.DEADLINE_EXCEEDED,
    ErrorCode.MODEL_ERROR: Status.INTERNAL,
}


@contextmanager
def grpc_errors() -> Iterator[None]:
    """Raise hostd errors as GRPCError with the mapped status; the message goes to grpc-message."""
    try:
        yield
    except HostdError as exc:
        raise GRPCError(STATUS[exc.code], f"{exc.code.value}: {exc.message}") from exc


class InFlight:
    """Counts RPCs being answered, so shutdown can wait for them before grpclib cancels them."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = anyio.Event()
        self._idle.set()

    @contextmanager
    def track(self) -> Iterator[None]:
        if self.count == 0:
            self._idle = anyio.Event()
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()
