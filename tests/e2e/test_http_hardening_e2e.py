"""Issue 13 (4, 6, 7, 8) over real sockets, on both servers: stalled bodies, the connection cap, the
drain on SIGTERM, refusals answered before the body, and clients that leave."""

from __future__ import annotations

import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import httpx
import orjson
import pytest
import tritonclient.grpc as triton

from tests.support.e2e import PATIENCE_S, REAL_MODELS, Start, echo, iris_payload, metric, pending, post_held, wait_for

pytestmark = pytest.mark.e2e
SERVERS = pytest.mark.parametrize("server", ["hypercorn", "uvicorn"])
IRIS = orjson.dumps(iris_payload(0))


def request(method: str, path: str, body: bytes = b"", *, length: int | None = None) -> bytes:
    """An HTTP/1.1 request; ``length`` declares a Content-Length other than the body's own."""
    head = [f"{method} {path} HTTP/1.1", "Host: hostd"]
    if method == "POST":
        head += ["Content-Type: application/json", f"Content-Length: {len(body) if length is None else length}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


def connect(port: int, timeout: float = PATIENCE_S) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_reply(sock: socket.socket) -> Reply | None:
    """The next response on ``sock``; None if the connection closed (or was reset) before all of one came."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
        while len(body) < int(headers.get("content-length", "0")):
            chunk = sock.recv(65536)
            if not chunk:
                return None
            body += chunk
    except ConnectionResetError:
        return None
    return Reply(int(status_line.split()[1]), headers, body)


def closed(sock: socket.socket) -> bool:
    """The server closed ``sock`` (end of stream or reset), with nothing more sent."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


@contextmanager
def open_file_limit(soft: int) -> Iterator[None]:
    """A lower soft limit on open files for what this process starts meanwhile (the child inherits it)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


# 13.4: half-sent bodies, the connection cap, the open-file limit

@SERVERS
def test_stalled_bodies_get_408_and_leave_descriptors_for_every_transport(start_hostd: Start, server: str) -> None:
    """300 POSTs that declare 100 bytes and send 10, against a daemon started with 256 descriptors:
    fresh HTTP and gRPC connections still work, and every stalled request gets 408, then its close."""
    with open_file_limit(256):
        hostd = start_hostd({"models": [echo()], "transports": {"http": {"server": server, "body_timeout_s": 2},
                                                                 "grpc": {}}})
    assert "open-file limit" in hostd.output()
    stalled = [connect(hostd.port) for _ in range(300)]
    oip = connect(hostd.port)
    try:
        for sock in stalled:
            sock.sendall(request("POST", "/api/models/echo/prediction", b'{"x": 1.0,', length=100))
        oip.sendall(request("POST", "/v2/models/echo/infer", b'{"inputs":', length=100))
        grpc = triton.InferenceServerClient(f"127.0.0.1:{hostd.transports['grpc']['port']}")
        try:
            assert grpc.is_server_live(client_timeout=10)
        finally:
            grpc.close()
        assert httpx.get(f"{hostd.url}/api/health", timeout=10).status_code == 200
        for sock in stalled:
            reply = read_reply(sock)
            assert reply is not None and reply.status == 408 and reply.closes, reply
            assert reply.json()["type"] == "REQUEST_TIMEOUT"
            assert "did not arrive within 2 s" in reply.json()["messages"][0]
            assert closed(sock)
        reply = read_reply(oip)
        assert reply is not None and reply.status == 408 and reply.json()["code"] == "REQUEST_TIMEOUT", reply
    finally:
        for sock in [*stalled, oip]:
            sock.close()
    assert httpx.post(f"{hostd.url}/api/models/echo/prediction", json={"x": 1}).json()["y"] == 2


@SERVERS
def test_headers_sent_a_byte_at_a_time_close_the_connection_at_the_keep_alive_timeout(start_hostd: Start,
                                                                                      server: str) -> None:
    """A slowloris client (headers never finished, a byte now and then, or nothing after connecting)
    is closed once keep_alive_timeout_s has passed since the request began; others are served meanwhile."""
    hostd = start_hostd({"models": [echo()], "transports": {"http": {"server": server, "keep_alive_timeout_s": 1}}})
    dribbling, silent = connect(hostd.port), connect(hostd.port)
    try:
        started = time.monotonic()
        dribbling.sendall(b"GET /api/health HTTP/1.1\r\nHost: h")
        assert httpx.post(f"{hostd.url}/api/models/echo/prediction", json={"x": 1}, timeout=PATIENCE_S).json()["y"] == 2
        for byte in b"ostd\r\nX-Slow: 1":  # a byte every 0.2 s: each arrives well within the timeout
            if closed_within(dribbling, 0.2):
                break
            dribbling.sendall(bytes([byte]))
        assert closed_within(dribbling, PATIENCE_S) and closed_within(silent, PATIENCE_S)
        assert time.monotonic() - started < PATIENCE_S  # closed by the server, not by our patience
    finally:
        dribbling.close()
        silent.close()
    assert httpx.get(f"{hostd.url}/api/health", timeout=PATIENCE_S).status_code == 200


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closed ``sock`` (EOF or reset) within ``seconds``; any data it sent is read past."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


@SERVERS
def test_a_connection_over_max_connections_is_closed_at_once_and_the_open_ones_keep_working(
        start_hostd: Start, server: str) -> None:
    hostd = start_hostd({"models": [echo()], "transports": {"http": {"server": server, "max_connections": 8}}})
    kept: list[socket.socket] = []

    def one_more_is_served() -> bool:  # and kept: counted as open
        sock = connect(hostd.port)
        sock.sendall(request("GET", "/api/health"))
        if read_reply(sock) is None:
            sock.close()
            return False
        kept.append(sock)
        return True

    try:
        # The start-up checks' connections may not all have closed yet: one may be refused meanwhile.
        wait_for(lambda: one_more_is_served() and len(kept) == 8, "8 connections are served")
        for _ in range(3):
            with connect(hostd.port) as extra:
                extra.sendall(request("GET", "/api/health"))
                assert closed(extra)
        for sock in kept:
            sock.sendall(request("POST", "/api/models/echo/prediction", b'{"x": 2}'))
            assert (reply := read_reply(sock)) is not None and reply.json() == {"y": 4, "text": ""}
        kept.pop().close()
        wait_for(one_more_is_served, "a connection is served once one of the 8 has closed")
    finally:
        for sock in kept:
            sock.close()


# 13.6: SIGTERM with kept-alive connections

@dataclass
class KeptAlive:
    """A client sending iris predictions one after another on one connection until told to stop."""

    port: int
    replies: list[tuple[float, Reply | None]] = field(default_factory=list)  # (sent at, reply or None: dropped)

    def run(self, until: float) -> None:
        with connect(self.port) as sock:
            while time.monotonic() < until:
                sent = time.monotonic()
                try:
                    sock.sendall(request("POST", "/api/models/iris_model/prediction", IRIS))
                except (BrokenPipeError, ConnectionResetError):
                    self.replies.append((sent, None))
                    return
                reply = read_reply(sock)
                self.replies.append((sent, reply))
                if reply is None or reply.closes:
                    return


@SERVERS
def test_sigterm_answers_every_request_on_kept_alive_connections(start_hostd: Start, server: str) -> None:
    """32 kept-alive clients, SIGTERM mid-run: every request gets its answer or 503 NOT_READY with
    Connection: close, never a closed connection without a reply."""
    hostd = start_hostd({"models": [REAL_MODELS[0]], "transports": {"http": {"server": server}},
                         "shutdown_grace_s": 10})
    clients = [KeptAlive(hostd.port) for _ in range(32)]
    threads = [threading.Thread(target=client.run, args=(time.monotonic() + PATIENCE_S,)) for client in clients]
    for thread in threads:
        thread.start()
    wait_for(lambda: all(len(client.replies) >= 20 for client in clients), "every client has 20 answers")
    sigterm = time.monotonic()
    hostd.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join()
    assert hostd.proc.wait(PATIENCE_S) == 0
    after = [reply for client in clients for sent, reply in client.replies if sent >= sigterm]
    dropped = [reply for client in clients for _, reply in client.replies if reply is None]
    assert not dropped, f"{len(dropped)} requests closed without a reply ({len(after)} sent after SIGTERM)"
    for client in clients:
        last = client.replies[-1][1]
        assert last is not None and last.closes, last  # every client was told to stop, by its last reply
    for reply in after:  # answered (those in flight at the SIGTERM), or refused as the drain does
        assert reply is not None
        assert reply.status == 200 or (reply.status == 503 and reply.closes and reply.json()["type"] == "NOT_READY")


@SERVERS
def test_the_drain_refuses_new_requests_with_close_and_cuts_off_a_stalled_body(
        start_hostd: Start, gates: Any, server: str) -> None:
    """During the drain: the held request is answered; a body still arriving gets 503 NOT_READY at once
    (it does not hold the drain: the grace period is 60 s); a request on a kept-alive connection gets
    503 NOT_READY in its route's format with Connection: close."""
    hostd = start_hostd({"models": [echo()], "shutdown_grace_s": 60,
                         "transports": {"http": {"server": server, "body_timeout_s": 60}}})
    gate = gates()
    held: dict[str, Any] = {}
    holder = threading.Thread(target=lambda: held.update(reply=post_held(hostd.url, gate, 5)))
    holder.start()
    wait_for(lambda: pending(hostd.url) == 1, "the held request reached the model")
    rest, oip, stalled = connect(hostd.port), connect(hostd.port), connect(hostd.port)
    try:
        for sock in (rest, oip):  # kept alive: each has had an answer
            sock.sendall(request("GET", "/api/health"))
            assert (reply := read_reply(sock)) is not None and reply.status == 200
        stalled.sendall(request("POST", "/api/models/echo/prediction", b'{"x": 1', length=100))
        hostd.proc.send_signal(signal.SIGTERM)
        reply = read_reply(stalled)
        assert reply is not None and reply.status == 503 and reply.closes, reply
        assert reply.json()["type"] == "NOT_READY"
        rest.sendall(request("POST", "/api/models/echo/prediction", b'{"x": 2}'))
        reply = read_reply(rest)
        assert reply is not None and reply.status == 503 and reply.closes and reply.json()["type"] == "NOT_READY"
        assert closed(rest)
        oip.sendall(request("GET", "/v2/models/echo"))
        reply = read_reply(oip)
        assert reply is not None and reply.status == 503 and reply.closes and reply.json()["code"] == "NOT_READY"
    finally:
        for sock in (rest, oip, stalled):
            sock.close()
    gate.touch()
    holder.join()
    assert held["reply"] == (200, {"y": 10, "text": ""})
    assert hostd.proc.wait(PATIENCE_S) == 0  # well before the 60 s grace


# 13.7: refusals are answered before the body is read

@SERVERS
def test_a_refused_prediction_is_answered_without_its_body(start_hostd: Start, gates: Any, server: str) -> None:
    """With the model full, a prediction whose body never comes still gets its 503 OVERLOADED (with
    Retry-After, in the route's format); one whose body came keeps its connection."""
    hostd = start_hostd({"models": [echo(max_pending=1)], "transports": {"http": {"server": server}}})
    gate = gates()
    held: dict[str, Any] = {}
    holder = threading.Thread(target=lambda: held.update(reply=post_held(hostd.url, gate, 5)))
    holder.start()
    wait_for(lambda: pending(hostd.url) == 1, "the held request reached the model")
    try:
        for path, code_of in (("/api/models/echo/prediction", lambda body: body["type"]),
                              ("/v2/models/echo/infer", lambda body: body["code"]),
                              ("/v2/models/echo/versions/1.0.0/infer", lambda body: body["code"])):
            with connect(hostd.port, timeout=10) as sock:  # no body: only a reply that does not wait for it
                sock.sendall(request("POST", path, length=50))
                reply = read_reply(sock)
                assert reply is not None and reply.status == 503 and code_of(reply.json()) == "OVERLOADED", reply
                assert reply.headers["retry-after"] == "1" and reply.closes
        with connect(hostd.port, timeout=10) as sock:
            sock.sendall(request("POST", "/api/models/nope/prediction", length=50))
            reply = read_reply(sock)
            assert reply is not None and reply.status == 404 and reply.json()["type"] == "MODEL_NOT_FOUND"
        with connect(hostd.port) as sock:  # the whole body sent: refused unread, the connection kept
            sock.sendall(request("POST", "/api/models/echo/prediction", b'{"x": 3}'))
            reply = read_reply(sock)
            assert reply is not None and reply.status == 503 and not reply.closes
            sock.sendall(request("GET", "/api/health"))
            assert (reply := read_reply(sock)) is not None and reply.status == 200
    finally:
        gate.touch()
        holder.join()
    assert held["reply"] == (200, {"y": 10, "text": ""})


# 13.8: one client per connection; a client that leaves has its queued work dropped

@SERVERS
def test_a_client_that_leaves_has_its_queued_request_dropped_before_the_model(
        start_hostd: Start, gates: Any, server: str) -> None:
    """One worker, held by A. B's request is queued behind it, with a gate never opened: had it reached
    the model, it would hold the worker for 120 s and C would get no answer."""
    model = echo(workers=1, batching={"max_batch_size": 1}, configuration={"open_within_s": 120})
    hostd = start_hostd({"models": [model], "transports": {"http": {"server": server}}})
    gate_a, gate_b = gates(), gates()
    held: dict[str, Any] = {}
    holder = threading.Thread(target=lambda: held.update(reply=post_held(hostd.url, gate_a, 1)))
    holder.start()
    wait_for(lambda: pending(hostd.url) == 1, "A reached the model")
    with connect(hostd.port) as leaver:
        leaver.sendall(request("POST", "/api/models/echo/prediction", orjson.dumps({"x": 2, "gate": str(gate_b)})))
        wait_for(lambda: pending(hostd.url) == 2, "B is queued")
    cancelled = 'hostd_requests_total{code="CANCELLED",model="echo",transport="http"}'
    wait_for(lambda: metric(hostd.url, cancelled) == 1, "B was cancelled when its client left")
    gate_a.touch()
    holder.join()
    assert held["reply"] == (200, {"y": 2, "text": ""})
    reply = httpx.post(f"{hostd.url}/api/models/echo/prediction", json={"x": 3}, timeout=PATIENCE_S)
    assert reply.json() == {"y": 6, "text": ""}


@pytest.mark.anyio
async def test_one_connection_is_one_client_held_to_its_share(start_hostd: Start, gates: Any) -> None:
    """max_pending 4, so a client may have 1 pending: a second request on the same (HTTP/2) connection
    is refused OVERLOADED, while another connection's request is admitted."""
    hostd = start_hostd({"models": [echo(max_pending=4)], "transports": {"http": {"server": "hypercorn"}}})
    gate = gates()
    url = f"{hostd.url}/api/models/echo/prediction"
    held = {"x": 1, "gate": str(gate)}
    async with httpx.AsyncClient(http1=False, http2=True, timeout=PATIENCE_S) as one, \
            httpx.AsyncClient(timeout=PATIENCE_S) as other, anyio.create_task_group() as tg:
        tg.start_soon(partial(one.post, url, json=held))
        await anyio.to_thread.run_sync(wait_for, lambda: pending(hostd.url) == 1, "the first request is held")
        second = await one.post(url, json={"x": 2})
        assert second.status_code == 503 and second.json()["type"] == "OVERLOADED"
        assert "max_pending_per_client" in second.json()["messages"][0]
        tg.start_soon(partial(other.post, url, json=held))
        await anyio.to_thread.run_sync(wait_for, lambda: pending(hostd.url) == 2, "another connection is admitted")
        gate.touch()

