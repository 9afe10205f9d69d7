"""A record key too long to copy into the output must not stall its partition: the request gets one
dead letter (PAYLOAD_TOO_LARGE) keyed by the key's SHA-256, saying so, and the messages behind it
are answered. Before, a 1.2 MB key went into the output whole, the producer refused it and the
partition was read again for ever."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from tests.e2e.brokers import Reader, StartTansu, Topics, request
from tests.e2e.test_kafka_e2e import serve
from tests.e2e.test_kafka_oversize_e2e import LIMIT, produce_big
from tests.support.e2e import Start, echo

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

LONG_KEYS: dict[str, tuple[bytes, bytes]] = {
    # request id: (key, value)
    "huge-key": (b"k" * 1_200_000, request("huge-key", "echo", {"x": 1})),  # over max_message_bytes
    "long-key": (b"\xff" * 5000, request("long-key", "echo", {"x": 1})),  # over max_key_bytes (4096)
    "huge-key-bad-value": (b"b" * 1_200_000, b"not json"),  # and the value fails too
}


@pytest.mark.timeout(120)
async def test_a_record_key_too_long_to_copy_gets_a_hashed_dead_letter_and_the_partition_goes_on(
        start_tansu: StartTansu, start_hostd: Start) -> None:
    broker = start_tansu()
    topics = Topics.named("keys")
    await topics.create(broker.bootstrap)
    await serve(start_hostd, broker, topics, [echo()])
    normal = [(b"k" * 4096, request(f"n{i}", "echo", {"x": i})) for i in range(10)]  # a key at the limit is kept
    await produce_big(broker.bootstrap, topics.input, [*LONG_KEYS.values(), *normal])

    async with Reader(broker.bootstrap, topics.output, topics.dead_letter) as reader:
        await reader.until(lambda: len(reader.on(topics.dead_letter)) >= len(LONG_KEYS)
                           and len(reader.on(topics.output)) >= len(normal), 60,
                           "a dead letter per long key and a reply to each normal message")
        await reader.past(topics.input)

    replies = reader.on(topics.output)
    assert [orjson.loads(record.value)["id"] for record in replies] == [f"n{i}" for i in range(10)]
    assert all(record.key == b"k" * 4096 for record in replies)
    letters = [orjson.loads(record.value) for record in reader.on(topics.dead_letter)]
    assert [letter["offset"] for letter in letters] == [0, 1, 2], "exactly one dead letter each, in order"
    for record, letter, (name, (key, value)) in zip(reader.on(topics.dead_letter), letters, LONG_KEYS.items(),
                                                     strict=True):
        digest = hashlib.sha256(key).hexdigest()
        assert len(record.key) + len(record.value) <= LIMIT, name
        assert record.key == digest.encode(), name
        assert (letter["key_truncated"], letter["key_bytes"], letter["key_sha256"]) == (True, len(key), digest)
        assert letter["value"] == value.decode() and "value_truncated" not in letter, name
    assert [letter["error"]["code"] for letter in letters] == ["PAYLOAD_TOO_LARGE", "PAYLOAD_TOO_LARGE",
                                                               "INVALID_INPUT"]
    assert letters[0]["id"] == "huge-key" and "record key is 1200000 bytes" in letters[0]["error"]["message"]
