"""The raw ASGI front of the HTTP app (plugins/hostd_http/front.py), driven in-process with ASGI messages."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import orjson
import pytest
from hostd_http.app import create_app
from hostd_http.connections import Connections
from hostd_http.front import Front, _prediction

from hostd.auth import Guard
from hostd.dataplane import DataPlane
from hostd.errors import Overloaded
from hostd.refusals import QUIET_SPELL_S
from hostd.settings import AuthSettings, HostSettings
from tests.http.test_app import SETTINGS, anyio_backend, dataplane, settings

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend", "dataplane", "settings"]  # the fixtures, shared with test_app.py


def front(dataplane: DataPlane, body_timeout_s: float = 30) -> Front:
    app = create_app(dataplane, HostSettings.model_validate(SETTINGS))
    return Front(app, dataplane, Connections(8), body_timeout_s=body_timeout_s)


def scope(method: str, path: str, query: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "http_version": "1.1", "method": method, "scheme": "http", "path": path,
            "raw_path": path.encode(), "root_path": "", "query_string": query, "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8080), "headers": [(b"host", b"hostd"), (b"content-length", b"100")]}


class Exchange:
    """An ASGI receive that hands out ``chunks`` and then waits for ever (a client that stalls), and a
    send that keeps the reply."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.chunks:
            return {"type": "http.request", "body": self.chunks.pop(0), "more_body": True}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    def json(self) -> Any:
        return orjson.loads(self.sent[1]["body"])


@pytest.mark.parametrize(("method", "path", "query", "target"), [
    ("POST", "/api/models/echo/prediction", b"", ("echo", None)),
    ("POST", "/api/models/echo/prediction", b"version=2.0.0", ("echo", "2.0.0")),
    ("POST", "/v2/models/echo/infer", b"", ("echo", None)),
    ("POST", "/v2/models/echo/versions/1.0.0/infer", b"", ("echo", "1.0.0")),
    ("GET", "/api/models/echo/prediction", b"", None),
    ("POST", "/api/models/echo/prediction/", b"", None),
    ("POST", "/api/models//prediction", b"", None),
    ("POST", "/v2/models/echo/versions//infer", b"", None),
    ("POST", "/api/models/echo/metadata", b"", None),
])
def test_predictions_are_recognised_by_the_routes_patterns(method: str, path: str, query: bytes,
                                                           target: tuple[str, str | None] | None) -> None:
    assert _prediction(scope(method, path, query)) == target


@pytest.mark.parametrize(("path", "code_of"), [
    ("/api/models/nope/prediction", lambda body: body["type"]),
    ("/v2/models/nope/infer", lambda body: body["code"]),
])
async def test_a_refusal_is_answered_without_waiting_for_the_body(dataplane: DataPlane, path: str,
                                                                  code_of: Any) -> None:
    exchange = Exchange()  # the body never comes
    await front(dataplane)(scope("POST", path), exchange.receive, exchange.send)
    assert exchange.status == 404 and code_of(exchange.json()) == "MODEL_NOT_FOUND"
    assert exchange.headers[b"connection"] == b"close"  # its body still due: the connection cannot go on


async def test_a_stalled_body_gets_408_and_the_connection_closes(dataplane: DataPlane) -> None:
    exchange = Exchange(b'{"x": 1')
    await front(dataplane, body_timeout_s=0.05)(scope("POST", "/api/models/echo/prediction"), exchange.receive,
                                                 exchange.send)
    assert exchange.status == 408 and exchange.headers[b"connection"] == b"close"
    assert exchange.json() == {"type": "REQUEST_TIMEOUT", "messages": [
        "POST /api/models/echo/prediction: the request body did not arrive within 0.05 s"]}


async def test_the_drain_cuts_off_a_body_still_arriving_and_refuses_every_new_request(dataplane: DataPlane) -> None:
    served = front(dataplane)
    stalled = Exchange(b'{"x": 1')
    reading = asyncio.create_task(served(scope("POST", "/api/models/echo/prediction"), stalled.receive, stalled.send))
    for _ in range(100):  # bounded: until the request waits for the rest of its body
        if served.reading:
            break
        await asyncio.sleep(0)
    dataplane.start_draining()
    served.drain()
    await reading
    assert stalled.status == 503 and stalled.json()["type"] == "NOT_READY"
    assert stalled.headers[b"connection"] == b"close"
    later = Exchange()
    await served(scope("GET", "/v2/models/echo"), later.receive, later.send)
    assert later.status == 503 and later.json()["code"] == "NOT_READY" and later.headers[b"connection"] == b"close"


async def test_connections_over_the_limit_are_refused_and_a_departed_ones_requests_cancelled() -> None:
    connections = Connections(2)
    first, second = connections.open(("127.0.0.1", 1)), connections.open(("127.0.0.1", 2))
    assert first is not None and second is not None
    assert connections.open(("127.0.0.1", 3)) is None
    assert connections.get(("127.0.0.1", 1)) is first and first.client.label == "127.0.0.1:1"

    async def never_answers(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.Event().wait()

    handling = asyncio.create_task(first.serve(never_answers, {}, Exchange().receive, Exchange().send))
    await asyncio.sleep(0)
    connections.close(first)
    await handling  # cancelled, and ended quietly: nobody is left to answer
    assert not handling.cancelled() and len(connections) == 1
    assert connections.open(("127.0.0.1", 3)) is not None


async def test_a_connection_refused_again_and_again_waits_longer_for_each_refusal(
        dataplane: DataPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    # A load generator ignoring Retry-After turned the event loop into a refusal machine: goodput fell to
    # ~35% of capacity under 4x overload. The first refusal is immediate; the next ones are held back.
    monkeypatch.setattr("hostd.refusals.FIRST_PAUSE_S", 30.0)  # long: only the drain can end the pause
    overloaded = Overloaded("model 'echo' has 4 requests pending (max_pending: 4); retry later")
    monkeypatch.setattr(dataplane, "refusal", lambda *args, **kwargs: overloaded)
    served = front(dataplane)
    assert served.connections.open(("127.0.0.1", 5000)) is not None  # the scope's connection
    path = "/api/models/echo/prediction"

    first = Exchange(b'{"x": 1}')
    with anyio.fail_after(5):
        await served(scope("POST", path), first.receive, first.send)
    assert first.status == 503 and first.headers[b"retry-after"] == b"1"
    second = Exchange(b'{"x": 1}')
    refusing = asyncio.create_task(served(scope("POST", path), second.receive, second.send))
    await anyio.wait_all_tasks_blocked()
    assert not refusing.done() and second.sent == [] and len(served.pausing) == 1  # held back
    dataplane.start_draining()
    served.drain()  # a pause never holds the drain
    with anyio.fail_after(5):
        await refusing
    assert second.status == 503 and second.json()["type"] == "OVERLOADED"


async def test_after_a_quiet_spell_a_connections_next_refusal_is_immediate_again(
        dataplane: DataPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hostd.refusals.FIRST_PAUSE_S", 30.0)
    overloaded = Overloaded("model 'echo' has 4 requests pending (max_pending: 4); retry later")
    monkeypatch.setattr(dataplane, "refusal", lambda *args, **kwargs: overloaded)
    served = front(dataplane)
    connection = served.connections.open(("127.0.0.1", 5000))
    assert connection is not None
    refusals = connection.client.refusals
    refusals.count, refusals.last = 8, asyncio.get_running_loop().time() - QUIET_SPELL_S - 1
    exchange = Exchange(b'{"x": 1}')
    with anyio.fail_after(5):
        await served(scope("POST", "/api/models/echo/prediction"), exchange.receive, exchange.send)
    assert exchange.status == 503 and refusals.count == 1


async def test_a_connection_sending_bad_keys_again_and_again_is_held_back_too(
        dataplane: DataPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    # A flood of requests with a wrong key must not turn the loop into a 401 machine either.
    monkeypatch.setattr("hostd.refusals.FIRST_PAUSE_S", 30.0)
    dataplane.guard = Guard(AuthSettings.model_validate({"keys": [{"name": "k", "sha256": "0" * 64}]}))
    served = front(dataplane)
    assert served.connections.open(("127.0.0.1", 5000)) is not None
    headers = [(b"authorization", b"Bearer wrong")]
    first = Exchange(b'{"x": 1}')
    with anyio.fail_after(5):
        await served({**scope("POST", "/api/models/echo/prediction"), "headers": headers}, first.receive, first.send)
    assert first.status == 401 and first.headers[b"www-authenticate"] == b'Bearer realm="hostd"'
    second = Exchange(b'{"x": 1}')
    refusing = asyncio.create_task(served({**scope("POST", "/api/models/echo/prediction"), "headers": headers},
                                          second.receive, second.send))
    await anyio.wait_all_tasks_blocked()
    assert not refusing.done() and len(served.pausing) == 1  # held back
    dataplane.start_draining()
    served.drain()
    with anyio.fail_after(5):
        await refusing
    assert second.status == 401


async def test_replies_say_close_from_the_moment_the_data_plane_drains(dataplane: DataPlane) -> None:
    # The daemon drains the data plane a moment before the transport's drain() runs; a request in
    # between was answered 503 NOT_READY without Connection: close (CI saw it under uvicorn).
    served = front(dataplane)
    dataplane.start_draining()
    for method, path in (("POST", "/api/models/echo/prediction"), ("GET", "/api/models/echo/metadata")):
        exchange = Exchange(b'{"x": 1}')
        await served(scope(method, path), exchange.receive, exchange.send)
        assert exchange.headers[b"connection"] == b"close", (path, exchange.status)
