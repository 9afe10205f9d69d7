"""hostd_kafka.stream.Stream.answer in-process: records in, outputs (replies or dead letters) out.

The consumer and producer are built but never started: answer() only reads records and calls the
data plane, so no broker is needed here (tests/e2e/test_kafka_e2e.py runs it against one)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord
from hostd_kafka.plugin import KafkaSettings
from hostd_kafka.stream import Stream

from hostd.dataplane import DataPlane
from hostd.registry import Registry
from hostd.settings import HostSettings

pytestmark = pytest.mark.anyio
SETTINGS = KafkaSettings()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def stream() -> AsyncIterator[Stream]:
    plane = DataPlane(Registry.from_settings(HostSettings.model_validate(
        {"models": [{"class_path": "tests.support.toy:EchoModel"}]})))
    plane.set_ready()
    stream = Stream(plane, SETTINGS)
    yield stream
    await stream.close()


def record(offset: int, value: bytes | dict[str, Any]) -> ConsumerRecord[bytes, bytes]:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return ConsumerRecord(topic=SETTINGS.input_topic, partition=0, offset=offset, timestamp=0, timestamp_type=0,
                          key=f"k{offset}".encode(), value=raw, checksum=None, serialized_key_size=3,
                          serialized_value_size=len(raw), headers=())


async def outputs(stream: Stream, *values: bytes | dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    answered = await stream.answer([record(offset, value) for offset, value in enumerate(values)])
    return [(topic, orjson.loads(value)) for topic, _key, value, _headers in answered]


@pytest.mark.parametrize("request_", [
    {"id": "a"},
    {"id": "a", "op": "predict"},
    {"id": "a", "model": ""},
    {"id": "a", "model": "echo", "version": 2},
    {"id": "a", "op": "train", "model": "echo", "data": {"x": 1}},
    {"id": "a", "model": "echo"},
    b"not json",
], ids=["nothing", "op-only", "empty-model", "version-not-a-string", "unknown-op", "no-data", "not-json"])
async def test_a_malformed_request_is_the_same_error_as_on_every_envelope_transport(
        stream: Stream, request_: bytes | dict[str, Any]) -> None:
    from hostd import envelope

    expected = orjson.loads(await envelope.handle(stream.dataplane, request_ if isinstance(request_, bytes)
                                                  else orjson.dumps(request_), "test"))
    [(topic, letter)] = await outputs(stream, request_)
    assert topic == SETTINGS.dead_letter_topic
    assert (letter["id"] if isinstance(request_, dict) else None, letter["error"]) == \
        (expected["id"] if isinstance(request_, dict) else None, expected["error"])


async def test_predictions_and_descriptions_come_out_in_record_order(stream: Stream) -> None:
    answered = await outputs(stream, {"id": "p1", "model": "echo", "data": {"x": 1}},
                             {"id": "m", "op": "models"},
                             {"id": "bad", "model": "echo", "data": {"x": "lots"}},
                             {"id": "p2", "model": "echo", "version": "1.0.0", "data": {"x": 2}})
    assert [topic for topic, _ in answered] == [SETTINGS.output_topic, SETTINGS.output_topic,
                                                SETTINGS.dead_letter_topic, SETTINGS.output_topic]
    assert answered[0][1] == {"id": "p1", "model": "echo", "version": "1.0.0", "prediction": {"y": 2.0, "text": ""}}
    assert [model["qualified_name"] for model in answered[1][1]["models"]] == ["echo"]
    assert answered[2][1]["error"]["code"] == "INVALID_INPUT" and answered[2][1]["id"] == "bad"
    assert answered[3][1]["prediction"] == {"y": 4.0, "text": ""}


async def test_the_predictions_of_a_poll_go_to_the_model_in_batches(stream: Stream) -> None:
    [served] = stream.dataplane.models()
    answered = await outputs(stream, *({"id": str(i), "model": "echo", "data": {"x": i}} for i in range(100)))
    assert [reply["prediction"]["y"] for _, reply in answered] == [2.0 * i for i in range(100)]
    assert served.model.batches == [64, 36]  # EACH_CHUNK rows a call, not one call per message
