"""hostd error codes -> gRPC status codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
    ErrorCode.LOAD_FAILED: Status.INTERNAL,  # as Triton answers a failed RepositoryModelLoad
    ErrorCode.FORBIDDEN: Status.PERMISSION_DENIED,
    ErrorCode.UNAUTHENTICATED: Status.UNAUTHENTICATED,
    ErrorCode.RATE_LIMITED: Status.RESOURCE_EXHAUSTED,
}


@contextmanager
def grpc_errors() -> Iterator[None]:
    """Raise hostd errors as GRPCError with the mapped status; the message goes to grpc-message."""
    try:
        yield
    except HostdError as exc:
        raise GRPCError(STATUS[exc.code], f"{exc.code.value}: {exc.message}") from exc
