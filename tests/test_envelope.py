"""hostd.envelope: the JSON request/reply shared by WebSocket, ZeroMQ and Kafka, over an in-process DataPlane."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from hostd import envelope
from hostd.auth import ANONYMOUS, Guard
from hostd.clients import Client
from hostd.dataplane import DataPlane
from hostd.errors import InvalidInput, PayloadTooLarge
from hostd.registry import Registry
from hostd.settings import HostSettings, RateLimitSettings

pytestmark = pytest.mark.anyio

TOY = "tests.support.toy"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def dataplane(*models: dict[str, Any], ready: bool = True) -> DataPlane:
    models = models or ({"class_path": f"{TOY}:EchoModel"},)
    plane = DataPlane(Registry.from_settings(HostSettings.model_validate({"models": list(models)})))
    if ready:
        plane.set_ready()
    return plane


def two_versions() -> DataPlane:
    return dataplane({"class_path": f"{TOY}:EchoModel", "configuration": {"version": "1.0.0", "factor": 1}},
                     {"class_path": f"{TOY}:EchoModel", "configuration": {"version": "2.0.0", "factor": 5}})


async def roundtrip(plane: DataPlane, request: Any, limit: int | None = None) -> dict[str, Any]:
    raw = request if isinstance(request, bytes | str) else orjson.dumps(request)
    reply = await envelope.handle(plane, raw, "test", limit)
    assert isinstance(reply, bytes)
    decoded: dict[str, Any] = orjson.loads(reply)
    return decoded


def error_of(reply: dict[str, Any]) -> dict[str, Any]:
    assert "prediction" not in reply, reply
    assert set(reply) == {"id", "error"}, reply
    assert set(reply["error"]) == {"code", "message", "details"}, reply
    error: dict[str, Any] = reply["error"]
    return error


# -- parse --------------------------------------------------------------------------------------------


def test_parse_keeps_the_id_and_every_field() -> None:
    request = envelope.parse(b'{"id": "r-1", "model": "echo", "version": null, "data": {"x": 1}}')
    assert request == {"id": "r-1", "model": "echo", "version": None, "data": {"x": 1}}


def test_parse_keeps_a_non_string_id_as_sent() -> None:
    assert envelope.parse('{"id": 7, "model": "echo"}')["id"] == 7


@pytest.mark.parametrize("raw", [b'{"model": "echo", "data": {}}', b'{"id": null, "model": "echo", "data": {}}'],
                         ids=["missing", "null"])
def test_parse_makes_up_a_unique_id_when_there_is_none(raw: bytes) -> None:
    first, second = envelope.parse(raw)["id"], envelope.parse(raw)["id"]
    assert isinstance(first, str) and len(first) >= 16
    assert first != second


def test_parse_accepts_text_and_utf8_bytes() -> None:
    assert envelope.parse('{"id": "é", "data": {"text": "ünï"}}')["data"] == {"text": "ünï"}
    assert envelope.parse('{"id": "é", "data": {"text": "ünï"}}'.encode())["id"] == "é"


@pytest.mark.parametrize("raw", [b"", b"hello", b'{"id": "r-1", "model": "echo",', "{'id': 1}", b"{} {}"],
                         ids=["empty", "word", "truncated", "single-quotes", "two-documents"])
def test_parse_rejects_what_is_not_json(raw: bytes | str) -> None:
    with pytest.raises(InvalidInput, match="not valid JSON"):
        envelope.parse(raw)


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"predict"', b"42", b"null", b"true"])
def test_parse_rejects_json_that_is_not_an_object(raw: bytes) -> None:
    with pytest.raises(InvalidInput, match="must be a JSON object"):
        envelope.parse(raw)


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00\x01", b"\x80abc", bytes(range(128, 256))])
def test_parse_names_binary_garbage_as_binary(raw: bytes) -> None:
    with pytest.raises(InvalidInput, match="binary, not UTF-8"):
        envelope.parse(raw)


def test_parse_rejects_a_message_over_the_limit_before_decoding_it() -> None:
    raw = orjson.dumps({"id": "big", "model": "echo", "data": {"text": "a" * 5000}})
    with pytest.raises(PayloadTooLarge) as raised:
        envelope.parse(raw, limit=4096)
    assert raised.value.message == f"message is {len(raw)} bytes; the limit is 4096"
    assert envelope.parse(raw, limit=len(raw))["id"] == "big"  # exactly at the limit is allowed
    with pytest.raises(PayloadTooLarge):
        envelope.parse(b"\xff" * 5000, limit=4096)  # the size is checked before the content


def test_the_limit_counts_bytes_for_a_text_message_too() -> None:
    # 600 characters of two-byte UTF-8 are 1,200 bytes: over a 1,000-byte limit.
    text = orjson.dumps({"data": {"text": "é" * 600}}).decode()
    with pytest.raises(PayloadTooLarge, match="the limit is 1000"):
        envelope.parse(text, limit=1000)


# -- every op -----------------------------------------------------------------------------------------


async def test_predict_replies_with_id_model_version_and_prediction() -> None:
    reply = await roundtrip(dataplane(), {"id": "r-1", "model": "echo", "data": {"x": 2, "text": "hi"}})
    assert reply == {"id": "r-1", "model": "echo", "version": "1.0.0", "prediction": {"y": 4.0, "text": "HI"}}


async def test_predict_is_the_default_op_and_can_be_named() -> None:
    plane = dataplane()
    named = await roundtrip(plane, {"id": "a", "op": "predict", "model": "echo", "data": {"x": 3}})
    assert named["prediction"] == {"y": 6.0, "text": ""}


async def test_a_reply_to_a_request_without_id_carries_the_made_up_id() -> None:
    plane = dataplane()
    first = await roundtrip(plane, {"model": "echo", "data": {"x": 1}})
    second = await roundtrip(plane, {"model": "echo", "data": {"x": 1}})
    assert isinstance(first["id"], str) and first["id"]
    assert first["id"] != second["id"]
    assert first["prediction"] == {"y": 2.0, "text": ""}


async def test_predict_picks_the_newest_version_or_the_one_asked_for() -> None:
    plane = two_versions()
    newest = await roundtrip(plane, {"id": 1, "model": "echo", "version": None, "data": {"x": 1}})
    assert (newest["version"], newest["prediction"]["y"]) == ("2.0.0", 5.0)
    old = await roundtrip(plane, {"id": 2, "model": "echo", "version": "1.0.0", "data": {"x": 1}})
    assert (old["id"], old["version"], old["prediction"]["y"]) == (2, "1.0.0", 1.0)


async def test_models_lists_every_model_version_with_its_metadata() -> None:
    reply = await roundtrip(two_versions(), {"id": "m", "op": "models"})
    assert set(reply) == {"id", "models"} and reply["id"] == "m"
    assert [(m["qualified_name"], m["version"]) for m in reply["models"]] == [("echo", "1.0.0"), ("echo", "2.0.0")]
    first = reply["models"][0]
    assert (first["display_name"], first["description"], first["deterministic"]) == ("Echo", "Doubles x", True)
    assert first["input_schema"]["properties"]["x"]["type"] == "number"
    assert first["output_schema"]["required"] == ["y"]


async def test_metadata_returns_the_schemas_of_a_model() -> None:
    reply = await roundtrip(two_versions(), {"id": "md", "op": "metadata", "model": "echo"})
    assert set(reply) == {"id", "metadata"} and reply["id"] == "md"
    metadata = reply["metadata"]
    assert (metadata["qualified_name"], metadata["version"]) == ("echo", "2.0.0")
    assert metadata["input_schema"]["required"] == ["x"]
    assert set(metadata["input_schema"]["properties"]) == {"x", "delay_ms", "fail", "text"}
    assert set(metadata["output_schema"]["properties"]) == {"y", "text"}
    older = await roundtrip(two_versions(), {"op": "metadata", "model": "echo", "version": "1.0.0"})
    assert older["metadata"]["version"] == "1.0.0"


async def test_metadata_of_an_unknown_model_or_version_is_model_not_found() -> None:
    plane = dataplane()
    error = error_of(await roundtrip(plane, {"id": "x", "op": "metadata", "model": "iris"}))
    assert error["code"] == "MODEL_NOT_FOUND" and "'iris'" in error["message"] and "echo" in error["message"]
    error = error_of(await roundtrip(plane, {"id": "x", "op": "metadata", "model": "echo", "version": "9.9"}))
    assert error["code"] == "MODEL_NOT_FOUND" and "'9.9'" in error["message"]


async def test_metadata_and_models_work_while_predictions_are_not_ready() -> None:
    plane = dataplane(ready=False)
    assert (await roundtrip(plane, {"op": "models"}))["models"][0]["qualified_name"] == "echo"
    assert (await roundtrip(plane, {"op": "metadata", "model": "echo"}))["metadata"]["version"] == "1.0.0"
    error = error_of(await roundtrip(plane, {"id": "p", "model": "echo", "data": {"x": 1}}))
    assert error["code"] == "NOT_READY" and "starting" in error["message"]


# -- errors become replies ----------------------------------------------------------------------------


@pytest.mark.parametrize(("request_", "words"), [
    ({"id": "e", "data": {"x": 1}}, ["'model' is required"]),
    ({"id": "e", "model": "", "data": {"x": 1}}, ["'model' is required"]),
    ({"id": "e", "model": ["echo"], "data": {"x": 1}}, ["'model' is required"]),
    ({"id": "e", "op": "metadata"}, ["'model' is required"]),
    ({"id": "e", "model": "echo"}, ["'data' is required"]),
    ({"id": "e", "model": "echo", "version": 1, "data": {"x": 1}}, ["'version' must be a string or null"]),
    ({"id": "e", "model": "echo", "version": ["1.0.0"], "data": {"x": 1}}, ["'version' must be a string"]),
    ({"id": "e", "op": "train", "model": "echo", "data": {"x": 1}},
     ["unknown op 'train'", "predict, models, metadata"]),
    ({"id": "e", "op": None, "model": "echo", "data": {"x": 1}}, ["unknown op None"]),
], ids=["no-model", "empty-model", "model-not-a-string", "metadata-without-model", "no-data",
        "version-a-number", "version-a-list", "unknown-op", "null-op"])
async def test_a_malformed_request_is_an_invalid_input_reply_with_its_id(request_: dict[str, Any],
                                                                         words: list[str]) -> None:
    error = error_of(await roundtrip(dataplane(), request_))
    assert error["code"] == "INVALID_INPUT"
    assert all(word in error["message"] for word in words), error["message"]
    assert error["details"] == []


async def test_the_error_reply_keeps_the_request_id() -> None:
    reply = await roundtrip(dataplane(), {"id": "keep-me", "model": "echo"})
    assert reply["id"] == "keep-me" and reply["error"]["code"] == "INVALID_INPUT"
    made_up = await roundtrip(dataplane(), {"model": "echo"})
    assert isinstance(made_up["id"], str) and made_up["id"]


@pytest.mark.parametrize(("raw", "words"), [
    (b"not json", ["not valid JSON"]),
    (b"\xff\xfe garbage", ["binary, not UTF-8"]),
    (b"[1, 2, 3]", ["must be a JSON object"]),
], ids=["not-json", "binary", "array"])
async def test_an_unparseable_message_is_an_invalid_input_reply_without_id(raw: bytes, words: list[str]) -> None:
    reply = await roundtrip(dataplane(), raw)
    error = error_of(reply)
    assert reply["id"] is None
    assert error["code"] == "INVALID_INPUT" and all(word in error["message"] for word in words)


async def test_a_message_over_the_limit_is_a_payload_too_large_reply() -> None:
    raw = orjson.dumps({"id": "big", "model": "echo", "data": {"x": 1, "text": "a" * 2000}})
    error = error_of(await roundtrip(dataplane(), raw, limit=1024))
    assert error["code"] == "PAYLOAD_TOO_LARGE" and "the limit is 1024" in error["message"]
    assert (await roundtrip(dataplane(), raw, limit=len(raw)))["prediction"]["text"] == "A" * 2000


async def test_an_unknown_model_or_version_is_a_model_not_found_reply() -> None:
    plane = dataplane()
    error = error_of(await roundtrip(plane, {"id": 1, "model": "iris", "data": {"x": 1}}))
    assert error["code"] == "MODEL_NOT_FOUND" and "'iris'" in error["message"]
    error = error_of(await roundtrip(plane, {"id": 2, "model": "echo", "version": "3.0.0", "data": {"x": 1}}))
    assert error["code"] == "MODEL_NOT_FOUND" and "'3.0.0'" in error["message"]


async def test_a_schema_error_is_an_invalid_input_reply_listing_each_field() -> None:
    reply = await roundtrip(dataplane(), {"id": "s", "model": "echo", "data": {"x": 5000, "fail": "maybe"}})
    error = error_of(reply)
    assert reply["id"] == "s" and error["code"] == "INVALID_INPUT"
    assert "invalid input for model 'echo'" in error["message"]
    assert {(d["field"], d["type"]) for d in error["details"]} == {("x", "less_than_equal"), ("fail", "bool_parsing")}
    assert all(d["message"] for d in error["details"])


@pytest.mark.parametrize("data", [None, [1, 2], "x=1", 3], ids=["null", "list", "string", "number"])
async def test_data_that_is_not_an_object_is_an_invalid_input_reply(data: Any) -> None:
    error = error_of(await roundtrip(dataplane(), {"id": "d", "model": "echo", "data": data}))
    assert error["code"] == "INVALID_INPUT" and "invalid input for model 'echo'" in error["message"]


async def test_a_model_that_raises_is_a_model_error_reply_and_the_next_request_works() -> None:
    plane = dataplane()
    error = error_of(await roundtrip(plane, {"id": "f", "model": "echo", "data": {"x": 1, "fail": True}}))
    assert error == {"code": "MODEL_ERROR", "message": "model 'echo' failed: RuntimeError: asked to fail",
                     "details": []}
    assert (await roundtrip(plane, {"id": "g", "model": "echo", "data": {"x": 1}}))["prediction"]["y"] == 2.0


async def test_a_slow_model_is_a_timeout_reply(gates: Callable[[], Path]) -> None:
    plane = dataplane({"class_path": f"{TOY}:GatedEcho", "timeout_ms": 50})
    # The gate stays shut until teardown: only timeout_ms can end the call.
    error = error_of(await roundtrip(plane, {"id": "t", "model": "echo", "data": {"x": 1, "gate": str(gates())}}))
    assert error["code"] == "TIMEOUT" and "50 ms" in error["message"]


async def test_answer_turns_a_parsed_request_into_a_reply_dict() -> None:
    plane = dataplane()
    assert await envelope.answer(plane, {"id": "a", "model": "echo", "data": {"x": 1}}, "test") == {
        "id": "a", "model": "echo", "version": "1.0.0", "prediction": {"y": 2.0, "text": ""}}
    reply = await envelope.answer(plane, {"id": "b", "model": "nope", "data": {}}, "test")
    assert reply["id"] == "b" and reply["error"]["code"] == "MODEL_NOT_FOUND"


async def test_predictions_are_counted_under_the_transport_given() -> None:
    plane = dataplane()
    await roundtrip(plane, {"model": "echo", "data": {"x": 1}})
    await roundtrip(plane, {"model": "echo", "data": {"x": "one"}})
    sample = plane.metrics.registry.get_sample_value
    assert sample("hostd_requests_total", {"model": "echo", "transport": "test", "code": "OK"}) == 1
    assert sample("hostd_requests_total", {"model": "echo", "transport": "test", "code": "INVALID_INPUT"}) == 1


def test_error_reply_and_encode_make_the_documented_shape() -> None:
    reply = envelope.error_reply("r-9", InvalidInput("bad", [{"field": "x"}]))
    assert orjson.loads(envelope.encode(reply)) == {
        "id": "r-9", "error": {"code": "INVALID_INPUT", "message": "bad", "details": [{"field": "x"}]}}


# -- prediction: the checks, for a transport that batches (Kafka) -------------------------------------


def test_prediction_is_the_checked_call_a_request_asks_for() -> None:
    call = envelope.prediction({"id": "r", "model": "echo", "version": "1.0.0", "data": {"x": 1}})
    assert call == envelope.Call("r", "echo", "1.0.0", {"x": 1})
    assert envelope.prediction({"id": "r", "op": "predict", "model": "echo", "data": None}) == \
        envelope.Call("r", "echo", None, None)  # the model's schema judges the data, not the envelope


@pytest.mark.parametrize("op", ["models", "metadata"])
def test_prediction_is_none_for_the_ops_that_describe_models(op: str) -> None:
    assert envelope.prediction({"id": "r", "op": op}) is None


@pytest.mark.parametrize(("request_", "words"), [
    ({"id": "e"}, "'model' is required"),
    ({"id": "e", "model": "echo"}, "'data' is required"),
    ({"id": "e", "model": "echo", "version": 3, "data": {}}, "'version' must be a string"),
    ({"id": "e", "op": "train"}, "unknown op 'train'"),
], ids=["no-model", "no-data", "version-a-number", "unknown-op"])
async def test_prediction_raises_what_answer_replies(request_: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidInput, match=words) as raised:
        envelope.prediction(request_)
    reply = await envelope.answer(dataplane(), request_, "test")
    assert reply == envelope.error_reply("e", raised.value)


# -- handle_all: a burst read from one connection ------------------------------------------------------

async def burst(plane: DataPlane, raws: list[bytes]) -> dict[int, dict[str, Any]]:
    replies: dict[int, dict[str, Any]] = {}

    async def reply(index: int, answer: bytes) -> None:
        assert index not in replies, "one answer per message"
        replies[index] = orjson.loads(answer)

    await envelope.handle_all(plane, raws, "test", reply, limit=4096)
    return replies


async def test_a_burst_for_a_batching_model_is_one_model_call_and_every_message_its_own_answer() -> None:
    plane = dataplane()
    raws = [orjson.dumps({"id": i, "model": "echo", "data": {"x": i}}) for i in range(40)]
    raws[7] = orjson.dumps({"id": 7, "model": "echo", "data": {"x": "seven"}})  # invalid: answered alone
    raws[9] = b"not json"
    replies = await burst(plane, raws)
    assert sorted(replies) == list(range(40))
    assert error_of(replies[7])["code"] == "INVALID_INPUT" and replies[7]["id"] == 7
    assert error_of(replies[9])["code"] == "INVALID_INPUT"
    for i in set(range(40)) - {7, 9}:
        assert replies[i] == {"id": i, "model": "echo", "version": "1.0.0", "prediction": {"y": 2.0 * i, "text": ""}}
    assert plane.model("echo").model.batches == [38]  # type: ignore[attr-defined]


async def test_a_burst_for_a_model_that_does_not_batch_is_answered_message_by_message() -> None:
    plane = dataplane({"class_path": f"{TOY}:EchoModel", "batching": {"max_batch_size": 1},
                       "workers": {"count": 4}})
    raws = [orjson.dumps({"id": i, "model": "echo", "data": {"x": i}}) for i in range(8)]
    raws.append(orjson.dumps({"id": "m", "op": "models"}))
    replies = await burst(plane, raws)
    assert [replies[i]["prediction"]["y"] for i in range(8)] == [2.0 * i for i in range(8)]
    assert replies[8]["id"] == "m" and len(replies[8]["models"]) == 1
    assert plane.model("echo").model.batches == [1] * 8  # type: ignore[attr-defined]


@pytest.mark.parametrize("batching", [64, 1], ids=["batching-model", "unbatched-model"])
async def test_each_message_takes_one_rate_limit_token_however_it_is_answered(batching: int) -> None:
    plane = DataPlane(Registry.from_settings(HostSettings.model_validate(
        {"models": [{"class_path": f"{TOY}:EchoModel", "batching": {"max_batch_size": batching}}]})),
        guard=Guard(None, RateLimitSettings(per_s=0.001, burst=3)))
    plane.set_ready()
    client = Client("ws-1", ANONYMOUS, "127.0.0.1")
    codes: list[str] = []

    async def reply(_: int, answer: bytes) -> None:
        decoded = orjson.loads(answer)
        codes.append(decoded["error"]["code"] if "error" in decoded else "OK")

    for i in range(3):  # one message per burst: the single-message path
        await envelope.handle_all(plane, [orjson.dumps({"id": i, "model": "echo", "data": {"x": i}})], "ws",
                                  reply, client=client)
    await envelope.handle_all(plane, [orjson.dumps({"id": 9, "model": "echo", "data": {"x": 9}})], "ws", reply,
                              client=client)
    assert codes == ["OK", "OK", "OK", "RATE_LIMITED"]


async def test_a_message_refused_before_the_data_plane_is_counted_once() -> None:
    """Not JSON, no model, no data: answered, and counted in hostd_requests_total like every refusal (under
    <unknown> unless it names a served model), so error rates on /metrics and the dashboard include them."""
    plane = dataplane()
    for message in (b"not json", {"id": "a", "data": {}}, {"id": "b", "model": "echo"},
                    {"id": "c", "model": "nope", "data": {}}, {"id": "d", "model": "echo", "data": {"x": "no"}}):
        assert error_of(await roundtrip(plane, message))["code"] in ("INVALID_INPUT", "MODEL_NOT_FOUND")

    def counted(model: str, code: str) -> float | None:
        return plane.metrics.registry.get_sample_value(
            "hostd_requests_total", {"model": model, "transport": "test", "code": code})

    assert (counted("<unknown>", "INVALID_INPUT"), counted("echo", "INVALID_INPUT"),
            counted("<unknown>", "MODEL_NOT_FOUND")) == (2.0, 2.0, 1.0)
