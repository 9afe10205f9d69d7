"""JSON responses (orjson), request bodies with a size limit, and errors as JSON in a protocol's format."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

import orjson
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hostd.dataplane import Prediction
from hostd.errors import ErrorCode, HostdError, InvalidInput, Overloaded, PayloadTooLarge, RateLimited, Unauthenticated

log = structlog.get_logger("hostd.http")

STATUS = {
    ErrorCode.INVALID_INPUT: 400,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.NOT_READY: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.MODEL_ERROR: 500,
    ErrorCode.LOAD_FAILED: 400,  # as Triton answers a failed repository load
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.RATE_LIMITED: 429,
}
# An overloaded model's queue drains in milliseconds: a second is long enough to wait.
RETRY_AFTER_S = "1"

# One protocol's error body from (code, message, details); rest.error_body and v2.error_body.
ErrorBody = Callable[[str, str, list[Any]], dict[str, Any]]
Handler = Callable[[Request, Exception], Awaitable[Response]]


class ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_handlers(body: ErrorBody) -> Mapping[type[Exception], Handler]:
    """Starlette exception handlers answering every error as JSON in ``body``'s format: hostd's errors
    by their code, starlette's own (404 no such route, 405 with Allow) by their HTTP status, and
    anything else (a bug) as a 500 that names nothing inside; the log has the traceback. Async: starlette
    runs a sync handler in a thread."""

    async def hostd_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HostdError)
        return error_response(body, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        allow = (exc.headers or {}).get("Allow")
        if allow:
            message += f" (allowed: {allow})"
        return ORJSONResponse(body(HTTPStatus(exc.status_code).name, message, []), exc.status_code, exc.headers)

    async def bug(request: Request, exc: Exception) -> Response:
        log.error("request failed", method=request.method, path=request.url.path, exc_info=exc)
        message = "hostd failed to answer; its log says why"
        return ORJSONResponse(body(HTTPStatus.INTERNAL_SERVER_ERROR.name, message, []), 500)

    return {HostdError: hostd_error, HTTPException: http_error, Exception: bug}


def error_response(body: ErrorBody, exc: HostdError) -> Response:
    """``exc`` as JSON in ``body``'s format, with its HTTP status (and Retry-After if overloaded)."""
    headers = {"Retry-After": RETRY_AFTER_S} if isinstance(exc, Overloaded) else None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}  # whole seconds (RFC 9110)
    elif isinstance(exc, Unauthenticated):
        headers = {"WWW-Authenticate": 'Bearer realm="hostd"'}
    return ORJSONResponse(body(exc.code.value, exc.message, exc.details), STATUS[exc.code], headers)


#: How much of an oversize body is read (and dropped) before the 413 goes out, as a multiple of the
#: limit. A server that answers and closes with the body still arriving makes the kernel reset the
#: connection, and the client may lose the 413 it was sent; reading a bounded tail first lets it
#: arrive. Bodies beyond this are cut off at once (the client may then see a reset).
DRAIN_FACTOR = 4


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    # isdecimal, not isdigit: "\xb2" (superscript two) is a digit that int() refuses.
    if declared and declared.isdecimal() and int(declared) > limit:
        if int(declared) <= DRAIN_FACTOR * limit:
            await _drain(request.stream(), DRAIN_FACTOR * limit)
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    stream = request.stream()
    async for chunk in stream:
        body += chunk
        if len(body) > limit:
            await _drain(stream, DRAIN_FACTOR * limit - len(body))
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
    return bytes(body)


async def _drain(stream: AsyncIterator[bytes], budget: int) -> None:
    async for chunk in stream:
        budget -= len(chunk)
        if budget < 0:
            return


def use_cache(request: Request) -> bool:
    """False if the client asked for a fresh answer (``Cache-Control: no-cache`` or ``no-store``)."""
    control = request.headers.get("cache-control")
    return control is None or not ("no-cache" in control.lower() or "no-store" in control.lower())


def answer_headers(result: Prediction) -> dict[str, str]:
    """Which version answered (with canary weights, a request without a version may get any of them),
    and, for a model with a cache, whether the cache did (X-Cache: HIT, every row from it; else MISS)."""
    headers = {"X-Model-Version": result.version}
    if result.cached is not None:
        headers["X-Cache"] = "HIT" if result.cached else "MISS"
    return headers


def parse_json(body: bytes | memoryview) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
