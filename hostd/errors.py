"""Errors with a transport-neutral code; each transport maps codes, never strings."""

from __future__ import annotations

from enum import Enum
from typing import Any


class ErrorCode(str, Enum):
    INVALID_INPUT = "INVALID_INPUT"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    OVERLOADED = "OVERLOADED"
    NOT_READY = "NOT_READY"
    TIMEOUT = "TIMEOUT"
    MODEL_ERROR = "MODEL_ERROR"
    LOAD_FAILED = "LOAD_FAILED"  # a model could not be loaded (the repository API, a reload)
    FORBIDDEN = "FORBIDDEN"  # the call is not allowed (a key without the scope, admin calls while off)
    UNAUTHENTICATED = "UNAUTHENTICATED"  # no API key, or one that is not valid
    RATE_LIMITED = "RATE_LIMITED"  # over the key's (or address's) rate limit


class HostdError(Exception):
    """Base of every error a client can see."""

    code: ErrorCode = ErrorCode.MODEL_ERROR

    def __init__(self, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, "details": self.details}


class InvalidInput(HostdError):
    code = ErrorCode.INVALID_INPUT


class ModelNotFound(HostdError):
    code = ErrorCode.MODEL_NOT_FOUND


class PayloadTooLarge(HostdError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class Overloaded(HostdError):
    code = ErrorCode.OVERLOADED


class NotReady(HostdError):
    code = ErrorCode.NOT_READY


class Timeout(HostdError):
    code = ErrorCode.TIMEOUT


class ModelError(HostdError):
    code = ErrorCode.MODEL_ERROR


class LoadFailed(HostdError):
    code = ErrorCode.LOAD_FAILED


class Forbidden(HostdError):
    code = ErrorCode.FORBIDDEN


class Unauthenticated(HostdError):
    code = ErrorCode.UNAUTHENTICATED


class RateLimited(HostdError):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConfigError(Exception):
    """host.yaml is wrong; the message names the file, line and key."""


class ConfigErrors(ConfigError):
    """Several problems found in one pass over the config, reported together."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(error) for error in errors))
        self.errors = errors


class ModelLoadError(ConfigError):
    """A model's own code raised while it loaded (import, ``__init__``, a decorator): a bug in the
    model, not in the config. ``__cause__`` is the model's exception, whose traceback says where."""


def innermost(exc: BaseException) -> BaseException:
    """The exception inside nested single-exception groups (task groups wrap what they raise)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    """``Type: message`` of the innermost exception, for log lines."""
    cause = innermost(exc)
    return f"{type(cause).__name__}: {cause}"


class StartupError(Exception):
    """A transport could not start (e.g. its port is taken); the daemon exits non-zero."""
