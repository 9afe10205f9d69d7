"""What hostd's arq worker reads from and writes to Redis: msgpack data, never pickles (by default).

arq pickles jobs and results unless told otherwise, and unpickling runs code: anyone who can write to
Redis could run code in hostd. With msgpack a job is only data. A failed job's result (arq hands the
serializer the exception itself) is stored as a plain map, ``{"code", "message", "details", "type"}``,
which any msgpack client can read; ``deserialize_errors`` turns it back into the hostd error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
from arq.jobs import Deserializer, SerializationError, Serializer

from hostd.errors import ErrorCode, HostdError

# The code of a failure that is not a HostdError, by the nearest class in its hierarchy.
CODES: dict[type[BaseException], ErrorCode] = {
    TimeoutError: ErrorCode.TIMEOUT,  # arq's job_timeout_s
    SerializationError: ErrorCode.INVALID_INPUT,  # the job is not msgpack (a pickle, say)
    BaseException: ErrorCode.MODEL_ERROR,
}
BY_CODE: dict[str, type[HostdError]] = {cls.code.value: cls for cls in HostdError.__subclasses__()}
# Failures a hostd-aware client gets back as what arq raised, not as a hostd error (arq's own API).
BUILTIN: dict[str, type[BaseException]] = {"TimeoutError": TimeoutError,
                                           "CancelledError": asyncio.CancelledError}


def failure(exc: BaseException) -> dict[str, Any]:
    """A failed job's result as data: the hostd error's code, message and details."""
    kind = type(exc).__name__
    if isinstance(exc, HostdError):
        return {**exc.to_dict(), "type": kind}
    code = next(CODES[cls] for cls in type(exc).__mro__ if cls in CODES)
    return {"code": code.value, "message": f"{kind}: {exc}" if str(exc) else kind, "details": [], "type": kind}


def serialize(record: dict[str, Any]) -> bytes:
    """arq ``job_serializer``: a job or a result record as msgpack."""
    result = record.get("r")
    if not isinstance(result, BaseException):
        return msgpack.packb(record)  # type: ignore[no-any-return]
    stored = failure(result)
    try:
        return msgpack.packb({**record, "r": stored})  # type: ignore[no-any-return]
    except (TypeError, ValueError):  # details that are not data: the code and message still get through
        as_text = {**stored, "details": [str(detail) for detail in stored["details"]]}
        return msgpack.packb({**record, "r": as_text})  # type: ignore[no-any-return]


def deserialize(data: bytes) -> dict[str, Any]:
    """arq ``job_deserializer``: msgpack only; a failed job's result stays a map (see ``failure``)."""
    record = msgpack.unpackb(data)
    if not isinstance(record, dict):
        raise ValueError(f"an arq record is a map, not {type(record).__name__}")
    return record


def error(result: dict[str, Any]) -> BaseException:
    """The exception a ``failure`` map stands for; only hostd's and arq's own classes, never by import."""
    message = str(result.get("message", ""))
    builtin = BUILTIN.get(str(result.get("type")))
    if builtin is not None:
        return builtin(message)
    return BY_CODE.get(str(result.get("code")), HostdError)(message, list(result.get("details") or []))


def deserialize_errors(data: bytes) -> dict[str, Any]:
    """For clients with hostd installed: like ``deserialize``, but ``job.result()`` raises a failed
    prediction as the hostd error (``hostd.errors.InvalidInput`` ...)."""
    record = deserialize(data)
    if record.get("s") is False and isinstance(record.get("r"), dict):
        record["r"] = error(record["r"])
    return record


def codec(name: str) -> tuple[Serializer | None, Deserializer | None]:
    """The worker's ``job_serializer``/``job_deserializer``; ``None`` is arq's default, pickle."""
    return (serialize, deserialize) if name == "msgpack" else (None, None)
