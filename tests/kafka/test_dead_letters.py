"""Every output fits what the producer accepts: an oversized dead letter is cut short and says so, and
a reply too big to send becomes a dead letter (tests/kafka/test_stream.py has the Stream fixture)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace

import orjson
import pytest
from hostd_kafka.plugin import KafkaSettings
from hostd_kafka.stream import Stream, bounded_dead_letter
from pydantic import ValidationError

from tests.kafka import test_stream
from tests.kafka.test_stream import SETTINGS, record

pytestmark = pytest.mark.anyio
anyio_backend, stream = test_stream.anyio_backend, test_stream.stream  # the same fixtures
LETTER = {"id": "x", "error": {"code": "INVALID_INPUT", "message": "bad", "details": []},
          "topic": "t", "partition": 0, "offset": 7}


@pytest.mark.parametrize("value", [b"a" * 5000, b'"' * 5000, b"\x00" * 5000, "\u00e9".encode() * 2500,
                                   b"\xff" * 5000], ids=["ascii", "quotes", "control", "two-byte", "binary"])
def test_a_letter_too_big_keeps_what_fits_and_says_what_it_was(value: bytes) -> None:
    encoded = bounded_dead_letter(LETTER, value, room=2000)
    letter = orjson.loads(encoded)
    assert 1000 < len(encoded) <= 2000, "cut to fit, not to nothing"
    assert (letter["value_truncated"], letter["value_bytes"], letter["value_sha256"]) == \
        (True, len(value), hashlib.sha256(value).hexdigest())
    kept = base64.b64decode(letter["value_base64"]) if "value_base64" in letter else letter["value"].encode()
    assert value.startswith(kept) and kept
    assert {key: letter[key] for key in LETTER} == LETTER


def test_a_letter_that_fits_is_the_documented_shape() -> None:
    assert orjson.loads(bounded_dead_letter(LETTER, b"hi", room=2000)) == {**LETTER, "value": "hi"}


def test_an_error_too_big_to_fit_keeps_its_code() -> None:
    huge = {**LETTER, "id": "i" * 5000, "error": {"code": "MODEL_ERROR", "message": "m" * 5000, "details": [1]}}
    letter = orjson.loads(bounded_dead_letter(huge, b"v" * 5000, room=2000))
    assert (letter["id"], letter["error"]["code"], letter["error"]["details"], letter["value"]) == \
        (None, "MODEL_ERROR", [], "")
    assert letter["value_truncated"] and letter["value_bytes"] == 5000


async def test_an_oversized_message_gets_one_bounded_dead_letter(stream: Stream) -> None:
    text = "a" * (SETTINGS.max_message_bytes + 1)
    value = orjson.dumps({"id": "big", "model": "echo", "data": {"x": 1, "text": text}})
    [(topic, _key, encoded, _headers)] = await stream.answer([record(0, value)])
    assert topic == SETTINGS.dead_letter_topic and len(encoded) <= SETTINGS.max_message_bytes
    letter = orjson.loads(encoded)
    assert (letter["error"]["code"], letter["value_bytes"], letter["offset"]) == ("PAYLOAD_TOO_LARGE", len(value), 0)


async def test_a_reply_too_big_to_send_is_a_dead_letter_saying_so(stream: Stream) -> None:
    text = "\u0390" * 200_000  # 400 KB in; upper-cased it is 1.2 MB of reply
    answered = await stream.answer([record(0, {"id": "loud", "model": "echo", "data": {"x": 1, "text": text}}),
                                    record(1, {"id": "fine", "model": "echo", "data": {"x": 1}})])
    assert [topic for topic, _, _, _ in answered] == [SETTINGS.dead_letter_topic, SETTINGS.output_topic]
    letter = orjson.loads(answered[0][2])
    assert (letter["id"], letter["error"]["code"], "value_truncated" in letter) == ("loud", "PAYLOAD_TOO_LARGE", False)
    assert "reply is" in letter["error"]["message"]


async def test_a_key_too_long_to_copy_is_a_dead_letter_keyed_by_its_hash(stream: Stream) -> None:
    key = b"k" * (SETTINGS.max_key_bytes + 1)
    long_key = replace(record(0, {"id": "a", "model": "echo", "data": {"x": 1}}), key=key)
    at_limit = replace(record(1, {"id": "b", "model": "echo", "data": {"x": 1}}), key=key[:-1])
    [(topic, out_key, encoded, _headers), reply] = await stream.answer([long_key, at_limit])
    letter, digest = orjson.loads(encoded), hashlib.sha256(key).hexdigest()
    assert (topic, out_key, letter["error"]["code"]) == (SETTINGS.dead_letter_topic, digest.encode(),
                                                          "PAYLOAD_TOO_LARGE")
    assert (letter["key_truncated"], letter["key_bytes"], letter["key_sha256"]) == (True, len(key), digest)
    assert reply[:2] == (SETTINGS.output_topic, key[:-1]), "a key within max_key_bytes is kept"


def test_max_key_bytes_leaves_room_for_the_value() -> None:
    with pytest.raises(ValidationError, match=r"max_key_bytes .* at most half of max_message_bytes"):
        KafkaSettings(max_message_bytes=4096, max_key_bytes=4096)
