"""The gRPC transport under hostile clients (issue 13.1, 13.4, 13.5), against a real hostd: raw HTTP/2
frames from a socket, tritonclient.grpc, and half-open TCP connections."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from hpack import Decoder, Encoder
from hyperframe.frame import DataFrame, Frame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

from tests.conftest import HostdProcess
from tests.support.e2e import PATIENCE_S, REAL_MODELS, Start, echo, iris_rows, rss_kb

pytestmark = pytest.mark.e2e

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = 0x8
PING = b"hostd-rt"


def grpc_target(server: HostdProcess) -> str:
    return f"127.0.0.1:{server.transports['grpc']['port']}"


@pytest.fixture
def iris(start_hostd: Start) -> HostdProcess:
    return start_hostd({"models": REAL_MODELS, "transports": {"http": {}, "grpc": {}}})


@pytest.fixture(scope="module")
def shared(start_shared_hostd: Start) -> HostdProcess:
    """For the tests that each measure their own request against it (RSS before and after)."""
    return start_shared_hostd({"models": REAL_MODELS, "transports": {"http": {}, "grpc": {}}})


@pytest.fixture(scope="module")
def client(shared: HostdProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url=grpc_target(shared)) as tc:
        yield tc


def iris_answers(client: triton.InferenceServerClient) -> bool:
    data, species = iris_rows()
    result = client.infer("iris_model", [tensor("input__0", data.astype(np.float32), "FP32")], client_timeout=30)
    return [value.decode() for value in result.as_numpy("species")] == species


def tensor(name: str, data: np.ndarray, datatype: str) -> triton.InferInput:
    infer_input = triton.InferInput(name, list(data.shape), datatype)
    infer_input.set_data_from_numpy(data)
    return infer_input


# -- 13.1: cancelled streams -----------------------------------------------------------------------


def cancel_round(port: int, streams: int) -> None:
    """One connection: the preface, an empty SETTINGS, then ``streams`` times HEADERS (END_HEADERS) for
    ModelInfer and RST_STREAM(CANCEL) on that stream; returns once the server has read them all (it
    answers a PING sent after them) and the connection is closed."""
    encoder = Encoder()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", "/inference.GRPCInferenceService/ModelInfer"),
               (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc")]
    frames = [PREFACE, SettingsFrame(0).serialize()]
    for stream_id in range(1, 2 * streams, 2):
        request = HeadersFrame(stream_id, encoder.encode(headers))
        request.flags.add("END_HEADERS")
        frames += [request.serialize(), RstStreamFrame(stream_id, error_code=CANCEL).serialize()]
    frames.append(PingFrame(0, opaque_data=PING).serialize())
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as sock:
        sock.sendall(b"".join(frames))
        received = b""
        while PING not in received:  # the PING ACK; bounded by the socket timeout and the data
            chunk = sock.recv(65536)
            assert chunk, f"the server closed the connection before answering the PING: {received[-200:]!r}"
            received += chunk


def test_cancelled_streams_do_not_leak_memory(iris: HostdProcess) -> None:
    # Before the fix each such stream kept ~10 KB for good: 5 x 2,000 grew RSS by ~90 MB.
    port = int(iris.transports["grpc"]["port"])
    for _ in range(2):  # warm-up: allocator arenas, lazily built things (~18 MB in the first rounds)
        cancel_round(port, 2_000)
    before = rss_kb(iris.proc.pid)
    growth = []
    for _ in range(5):
        cancel_round(port, 2_000)
        growth.append(rss_kb(iris.proc.pid) - before)
    print("growth KB", growth)
    assert growth[-1] < 10_000, f"RSS grew by {growth} KB after rounds of 2,000 cancelled streams"
    with triton.InferenceServerClient(url=grpc_target(iris)) as tc:
        assert iris_answers(tc)


# -- 13.5: request size ----------------------------------------------------------------------------


def big_iris() -> list[triton.InferInput]:
    """The adversarial run's [500000, 4] FP32 tensor: 8 MB."""
    return [tensor("input__0", np.zeros((500_000, 4), dtype=np.float32), "FP32")]


def huge_raw() -> list[triton.InferInput]:
    """64 MB of raw_input_contents."""
    return [tensor("input__0", np.zeros((4_000_000, 4), dtype=np.float32), "FP32")]


def many_digits() -> list[triton.InferInput]:
    """10,000 digit images (5.1 MB as INT64), which HTTP refuses with 413."""
    images = np.resize(load_digits().images.astype(np.int64), (10_000, 8, 8))
    return [tensor("image", images, "INT64")]


@pytest.mark.parametrize(("model", "inputs"), [("iris_model", big_iris), ("iris_model", huge_raw),
                                               ("digits_model", many_digits)])
def test_a_request_over_max_request_bytes_is_resource_exhausted(
        shared: HostdProcess, client: triton.InferenceServerClient, model: str,
        inputs: Callable[[], list[triton.InferInput]]) -> None:
    before = rss_kb(shared.proc.pid)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, inputs(), client_timeout=60)
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED", caught.value.message()
    assert caught.value.message().startswith("PAYLOAD_TOO_LARGE: request message is "), caught.value.message()
    assert "the limit is 1048576" in caught.value.message()
    # Refused after the 5-byte prefix: the body was never buffered (it was 8-64 MB, and grew RSS by 530 MB).
    assert rss_kb(shared.proc.pid) - before < 30_000
    assert iris_answers(client)  # the daemon still answers a normal request right after


# -- 13.4: connections -----------------------------------------------------------------------------


def test_connections_over_max_connections_are_closed_and_others_still_served(start_hostd: Start) -> None:
    server = start_hostd({"models": [echo()], "transports": {"http": {}, "grpc": {"max_connections": 20}}})
    port = int(server.transports["grpc"]["port"])
    idle = [socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) for _ in range(20)]  # half-open
    try:
        # One more is closed at once, with an HTTP/2 GOAWAY saying why.
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as extra:
            received = b""
            while chunk := extra.recv(65536):  # bounded: the server closes it
                received += chunk
        assert b"too many connections" in received
        # A real client is not served (grpc reconnects after a GOAWAY until its deadline)...
        with triton.InferenceServerClient(url=f"127.0.0.1:{port}") as tc, \
                pytest.raises(InferenceServerException) as caught:
            tc.is_server_live(client_timeout=2)
        assert caught.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
        assert httpx.get(f"{server.url}/api/health/ready", timeout=PATIENCE_S).status_code == 200  # HTTP is
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + PATIENCE_S
    while True:  # ...until the idle ones close: the server notices, and serves a client again
        try:
            with triton.InferenceServerClient(url=f"127.0.0.1:{port}") as tc:
                assert tc.is_server_live(client_timeout=5)
            break
        except InferenceServerException:
            assert time.monotonic() < deadline, "gRPC still refused connections after the idle ones closed"


# -- 13.4: a message announced, then never sent -----------------------------------------------------


def stalled_message(port: int) -> tuple[list[tuple[str, str]], float]:
    """One ModelInfer stream whose 5-byte prefix announces 100 bytes, of which 10 come and then nothing:
    the headers of the server's answer (its trailers) and the seconds it took."""
    encoder, decoder = Encoder(), Decoder()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", "/inference.GRPCInferenceService/ModelInfer"),
               (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"), ("te", "trailers")]
    request = HeadersFrame(1, encoder.encode(headers))
    request.flags.add("END_HEADERS")
    partial = DataFrame(1, struct.pack(">?I", False, 100) + b"\x00" * 10)
    answered: list[tuple[str, str]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as sock:
        started = time.monotonic()
        sock.sendall(PREFACE + SettingsFrame(0).serialize() + request.serialize() + partial.serialize())
        buffer = b""
        while not any(name == "grpc-status" for name, _ in answered):  # bounded by the socket timeout
            chunk = sock.recv(65536)
            assert chunk, f"the server closed the connection without answering the stream: {answered}"
            buffer += chunk
            while len(buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
                if len(buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(buffer[9:9 + length]))
                buffer = buffer[9 + length:]
                if isinstance(frame, HeadersFrame) and frame.stream_id == 1:
                    answered += [(str(name), str(value)) for name, value in decoder.decode(frame.data, raw=False)]
        return answered, time.monotonic() - started


def test_a_message_that_stops_arriving_is_answered_at_body_timeout_s(start_hostd: Start) -> None:
    # Before: the stream waited for the rest for ever (and held the drain at shutdown).
    server = start_hostd({"models": REAL_MODELS, "transports": {"http": {}, "grpc": {"body_timeout_s": 0.5}}})
    answered, seconds = stalled_message(int(server.transports["grpc"]["port"]))
    trailers = dict(answered)
    assert trailers["grpc-status"] == "4", trailers  # DEADLINE_EXCEEDED
    assert "did not arrive within 0.5 s" in trailers["grpc-message"], trailers
    assert seconds >= 0.5
    with triton.InferenceServerClient(url=grpc_target(server)) as tc:
        assert iris_answers(tc)
