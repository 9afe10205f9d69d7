"""zerorpc hardening (issue 13, minor): every malformed event gets an ERR event back, and hostd keeps
serving. The real zerorpc client where it can send the event, raw pyzmq + msgpack where it cannot."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from tests.conftest import ROOT, HostdProcess
from tests.support.e2e import REAL_MODELS, Start, iris_payload, problems_logged

pytestmark = pytest.mark.e2e

# The real zerorpc client (gevent, so in its own process): calls ``client(name, *args)`` for each
# call, where a name may be any msgpack value, as zerorpc lets it be.
ZERORPC_CALLS = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import zerorpc
client = zerorpc.Client(heartbeat=5, timeout=float(sys.argv[2]))
client.connect(sys.argv[1])
results = []
for name, args in json.loads(sys.argv[3]):
    try:
        results.append({"ok": client(name, *args)})
    except zerorpc.RemoteError as exc:
        results.append({"error": [exc.name, exc.msg]})
    except (zerorpc.TimeoutExpired, zerorpc.LostRemote) as exc:
        results.append({"no reply": type(exc).__name__})
client.close()
print(json.dumps(results))
"""


def zerorpc_calls(endpoint: str, calls: list[tuple[Any, list[Any]]], timeout: float = 5) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, "-c", ZERORPC_CALLS, endpoint, str(timeout), json.dumps(calls)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30 + timeout * len(calls))
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


@pytest.fixture
def served(start_hostd: Start) -> HostdProcess:
    return start_hostd({"models": REAL_MODELS[:1], "transports": {"http": {}, "zmq": {"max_message_bytes": 4096}}})


@pytest.fixture
def dealer(served: HostdProcess) -> Iterator[zmq.Socket[bytes]]:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(str(served.transports["zmq"]["zerorpc_bind"]))
    yield sock
    sock.close(linger=0)
    context.destroy(linger=0)


def event(header: Any, name: Any, args: Any) -> bytes:
    return msgpack.packb([header, name, args], use_bin_type=True)


def reply_to(dealer: zmq.Socket[bytes], frames: list[bytes], timeout: float = 10) -> tuple[dict[str, Any], str, Any]:
    """Send ``frames`` after an empty delimiter (as zerorpc does); the event that answers them."""
    dealer.send_multipart([b"", *frames])
    assert dealer.poll(int(timeout * 1000), zmq.POLLIN), f"no reply to {frames!r} within {timeout} s"
    header, name, args = msgpack.unpackb(dealer.recv_multipart()[-1], raw=False)
    return header, name, args


def test_a_zerorpc_method_name_that_is_a_list_is_an_invalid_input_remote_error(served: HostdProcess) -> None:
    results = zerorpc_calls(str(served.transports["zmq"]["zerorpc_bind"]), [
        (["iris_model"], [iris_payload(0)]),
        (7, [iris_payload(0)]),
        ("iris_model", [iris_payload(0)]),
    ])
    for result in results[:2]:
        assert "error" in result, f"no error reply: {results}"
        assert result["error"][0] == "INVALID_INPUT" and "must be a string" in result["error"][1], results
    assert results[2] == {"ok": {"species": "Iris setosa"}}
    assert served.proc.poll() is None
    assert problems_logged(served.output()) == []


MALFORMED: list[tuple[str, list[bytes], Any, str, str]] = [
    # name, frames after the delimiter, the response_to expected, code, words of the message
    ("not msgpack", [b"\xc1 not msgpack"], None, "INVALID_INPUT", "not msgpack"),
    ("empty frame", [b""], None, "INVALID_INPUT", "not msgpack"),
    ("not a list", [msgpack.packb({"message_id": b"m"})], None, "INVALID_INPUT", "[header, name, args]"),
    ("two parts", [msgpack.packb([{"message_id": b"m"}, "iris_model"])], None, "INVALID_INPUT", "[header, name"),
    ("header not a map", [event([b"m"], "iris_model", [{}])], None, "INVALID_INPUT", "header a map"),
    ("no message_id", [event({"v": 3}, "iris_model", [iris_payload(0)])], None, "INVALID_INPUT", "message_id"),
    ("name a list", [event({"message_id": b"m-list", "v": 3}, ["iris_model"], [{}])], b"m-list", "INVALID_INPUT",
     "must be a string"),
    ("name a map", [event({"message_id": b"m-map", "v": 3}, {"a": 1}, [{}])], b"m-map", "INVALID_INPUT",
     "must be a string"),
    ("name nil", [event({"message_id": 5, "v": 3}, None, [])], 5, "INVALID_INPUT", "must be a string"),
    ("args not a list", [event({"message_id": b"m-args", "v": 3}, "iris_model", "x")], b"m-args", "INVALID_INPUT",
     "one argument"),
    ("over the size limit", [event({"message_id": b"m-big", "v": 3}, "iris_model", ["x" * 6_000])], None,
     "PAYLOAD_TOO_LARGE", "limit is 4096"),
]


def test_every_malformed_zerorpc_event_gets_an_err_event_and_the_socket_keeps_serving(
        served: HostdProcess, dealer: zmq.Socket[bytes]) -> None:
    good = event({"message_id": b"good", "v": 3}, "iris_model", [iris_payload(100)])
    for case, frames, response_to, code, words in MALFORMED:
        header, name, args = reply_to(dealer, frames)
        assert name == "ERR" and header.get("response_to") == response_to, (case, header, name, args)
        assert args[0] == code and words in args[1], (case, args)
        assert reply_to(dealer, [good])[1:] == ("OK", [{"species": "Iris virginica"}]), case
    assert served.proc.poll() is None
    assert problems_logged(served.output()) == []
