"""hostd_zmq.zerorpc in-process: zerorpc events in, zerorpc events out, over a real DataPlane."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hostd_zmq import zerorpc
from hostd_zmq.router import Respond

from hostd.clients import Client
from hostd.dataplane import DataPlane
from hostd.registry import Registry
from hostd.settings import HostSettings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def dataplane() -> DataPlane:
    plane = DataPlane(Registry.from_settings(HostSettings.model_validate(
        {"models": [{"class_path": "tests.support.toy:EchoModel"}]})))
    plane.set_ready()
    return plane


async def replies_to(respond: Respond, messages: list[list[bytes]]) -> list[list[bytes]]:
    """What ``respond`` sends for ``messages`` from one peer; a quick call sends no heartbeat."""
    sent: list[list[bytes]] = []

    async def send(frames: list[bytes]) -> None:
        assert b"_zpc_hb" not in frames[-1], "no heartbeat expected from a quick call"
        sent.append(frames)

    await respond(messages, send, Client("peer"))
    return sent


async def call(dataplane: DataPlane, name: str, args: Any) -> tuple[str, list[Any]]:
    event = msgpack.packb([{"message_id": b"m-1", "v": 3}, name, args], use_bin_type=True)
    (reply,) = await replies_to(zerorpc.responder(dataplane), [[b"peer", b"", event]])
    assert reply[:2] == [b"peer", b""]
    header, status, result = msgpack.unpackb(reply[-1], raw=False)
    assert header["response_to"] == b"m-1"
    return status, result


async def test_a_call_returns_the_prediction(dataplane: DataPlane) -> None:
    assert await call(dataplane, "echo", [{"x": 2}]) == ("OK", [{"y": 4.0, "text": ""}])


@pytest.mark.parametrize(("args", "code", "words"), [
    ([], "INVALID_INPUT", "one argument"),
    ([{"x": 1}, {"x": 2}], "INVALID_INPUT", "one argument"),
    ("not a list", "INVALID_INPUT", "one argument"),
    ([{"x": "lots"}], "INVALID_INPUT", "invalid input for model 'echo'"),
    ([{"x": 1, "fail": True}], "MODEL_ERROR", "asked to fail"),
], ids=["no-argument", "two-arguments", "arguments-not-a-list", "schema", "model-raises"])
async def test_every_error_is_named_by_its_code_as_the_readme_says(dataplane: DataPlane, args: Any, code: str,
                                                                   words: str) -> None:
    status, (name, message, _traceback) = await call(dataplane, "echo", args)
    assert (status, name) == ("ERR", code)
    assert words in message


async def test_an_unknown_model_is_model_not_found(dataplane: DataPlane) -> None:
    status, (name, message, _) = await call(dataplane, "lily_model", [{"x": 1}])
    assert (status, name) == ("ERR", "MODEL_NOT_FOUND") and "lily_model" in message


async def test_a_malformed_event_is_answered_with_err_naming_what_is_wrong(dataplane: DataPlane) -> None:
    respond = zerorpc.responder(dataplane, max_message_bytes=1024)
    for blob, response_to, code, words in [
        (msgpack.packb([{"message_id": b"m-2"}, ["echo"], [{"x": 1}]]), b"m-2", "INVALID_INPUT", "must be a string"),
        (msgpack.packb([{"v": 3}, "echo", [{"x": 1}]]), None, "INVALID_INPUT", "no message_id"),
        (b"\xc1", None, "INVALID_INPUT", "not msgpack"),
        (msgpack.packb([{"message_id": b"m-3"}, "echo", ["x" * 2000]]), None, "PAYLOAD_TOO_LARGE", "limit is 1024"),
    ]:
        (reply,) = await replies_to(respond, [[b"peer", blob]])
        assert reply[:2] == [b"peer", b""]
        header, status, (name, message, _) = msgpack.unpackb(reply[-1], raw=False)
        assert (header["response_to"], status, name) == (response_to, "ERR", code)
        assert words in message


async def test_calls_read_together_are_each_answered_as_soon_as_done(dataplane: DataPlane) -> None:
    events = [msgpack.packb([{"message_id": f"m-{i}".encode(), "v": 3}, "echo", [{"x": i}]], use_bin_type=True)
              for i in range(3)]
    replies = await replies_to(zerorpc.responder(dataplane), [[b"peer", b"", event] for event in events])
    answers = {header["response_to"]: (status, result) for header, status, result
               in (msgpack.unpackb(reply[-1], raw=False) for reply in replies)}
    assert answers == {f"m-{i}".encode(): ("OK", [{"y": 2.0 * i, "text": ""}]) for i in range(3)}
