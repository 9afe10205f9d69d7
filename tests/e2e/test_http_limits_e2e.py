"""An oversize body gets its 413 over a real socket, every time, also while the body is still arriving."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.e2e import Start, echo

pytestmark = pytest.mark.e2e

LIMIT = 1 << 20  # the default max_request_bytes


def chunks(total: int, size: int = 16 * 1024) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b" " * size


def test_oversize_bodies_are_answered_413_not_reset(start_hostd: Start) -> None:
    server = start_hostd({"models": [echo()], "transports": {"http": {"max_request_bytes": LIMIT}}})
    url = f"{server.url}/api/models/echo/prediction"
    statuses = []
    for _ in range(20):  # a fresh connection each time: the answer must survive the close that follows
        with httpx.Client(timeout=10) as http:
            statuses.append(http.post(url, content=b"[" + b" " * (3 * LIMIT) + b"]").status_code)  # declared
            statuses.append(http.post(url, content=chunks(3 * LIMIT)).status_code)  # chunked, no length
    assert statuses == [413] * 40
    with httpx.Client(timeout=10) as http:  # and the daemon serves on
        assert http.post(url, json={"x": 1}).json()["y"] == 2
