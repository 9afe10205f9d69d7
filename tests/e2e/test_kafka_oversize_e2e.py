"""A message whose dead letter (or reply) would be bigger than the producer accepts must not stall
its partition: it gets one bounded dead letter and the messages behind it are answered."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

import anyio
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.e2e.brokers import Reader, StartTansu, Topics, request
from tests.e2e.test_kafka_e2e import serve
from tests.support.e2e import Start, echo

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

LIMIT = 1 << 20  # max_message_bytes, the transport's default
OVERSIZE: dict[str, bytes] = {
    # key: a value whose dead letter or reply would not fit in the producer's max_request_size
    "too-big": request("too-big", "echo", {"x": 1, "text": "a" * 1_500_000}),  # over the input limit
    "quotes": orjson.dumps({"id": "quotes", "model": "echo", "data": [""] * 266_000}),  # 800 KB, escaped 1.3 MB
    "binary": b"\xff" * 900_000,  # base64: 1.2 MB
    "loud-reply": request("loud-reply", "echo", {"x": 1, "text": "\u0390" * 200_000}),  # upper(): 3x the bytes
}


async def produce_big(bootstrap: str, topic: str, messages: Iterable[tuple[bytes, bytes]]) -> None:
    """Like brokers.produce, with room for a 1.5 MB record (the default max_request_size is 1 MiB)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4 << 20)
    await producer.start()
    try:
        with anyio.fail_after(30):
            for key, value in messages:
                await producer.send_and_wait(topic, value, key=key, partition=0)
    finally:
        await producer.stop()


@pytest.mark.timeout(120)
async def test_an_oversized_dead_letter_is_truncated_and_the_partition_goes_on(
        start_tansu: StartTansu, start_hostd: Start) -> None:
    broker = start_tansu()
    topics = Topics.named("oversize")
    await topics.create(broker.bootstrap)
    await serve(start_hostd, broker, topics, [echo()])
    normal = [(b"k", request(f"n{i}", "echo", {"x": i})) for i in range(10)]
    await produce_big(broker.bootstrap, topics.input, [*((key.encode(), v) for key, v in OVERSIZE.items()), *normal])

    async with Reader(broker.bootstrap, topics.output, topics.dead_letter) as reader:
        await reader.until(lambda: len(reader.on(topics.dead_letter)) >= len(OVERSIZE)
                           and len(reader.on(topics.output)) >= len(normal), 60,
                           "a dead letter per oversized message and a reply to each normal one")
        await reader.past(topics.input)

    replies = [orjson.loads(record.value) for record in reader.on(topics.output)]
    assert [reply["id"] for reply in replies] == [f"n{i}" for i in range(10)], "each answered once, in order"
    letters = {record.key.decode(): record for record in reader.on(topics.dead_letter)}
    assert sorted(letters) == sorted(OVERSIZE), "exactly one dead letter each"
    for key, original in OVERSIZE.items():
        assert len(letters[key].value) <= LIMIT, key
        letter = orjson.loads(letters[key].value)
        assert (letter["topic"], letter["partition"]) == (topics.input, 0), key
        if key == "loud-reply":  # the request fits: only the reply was too big
            assert (letter["value"].encode(), "value_truncated" in letter) == (original, False)
            continue
        assert (letter["value_truncated"], letter["value_bytes"], letter["value_sha256"]) == \
            (True, len(original), hashlib.sha256(original).hexdigest()), key
        kept = base64.b64decode(letter["value_base64"]) if key == "binary" else letter["value"].encode()
        assert original.startswith(kept) and len(kept) > LIMIT // 2, key
    codes = {key: orjson.loads(record.value)["error"]["code"] for key, record in letters.items()}
    assert codes == {"too-big": "PAYLOAD_TOO_LARGE", "quotes": "INVALID_INPUT", "binary": "INVALID_INPUT",
                     "loud-reply": "PAYLOAD_TOO_LARGE"}
