"""hostd run, served over Kafka (Tansu): envelopes in, replies and dead letters out, at least once."""

from __future__ import annotations

import base64
import itertools
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from sklearn.datasets import load_digits

from tests.conftest import HostdProcess
from tests.e2e.brokers import Reader, StartTansu, Tansu, Topics, produce, request
from tests.support.e2e import (
    REAL_MODELS,
    SPECIES,
    Start,
    echo,
    every_model_requests,
    iris_payload,
    logged,
    pending,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

MAX_BATCH = 500  # the transport's default: the most a consumer can have in flight uncommitted


async def rows_predicted(server: HostdProcess, model: str) -> int:
    """Rows the model predicted in this hostd, from its Prometheus /metrics."""
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        text = (await http.get("/metrics")).text
    prefix = f'hostd_request_rows_sum{{model="{model}"}} '
    sums = [float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)]
    return round(sum(sums))  # no line yet: nothing predicted


async def serve(start_hostd: Start, broker: Tansu, topics: Topics, models: list[dict[str, Any]],
                **kafka: Any) -> HostdProcess:
    config = {"models": models, "transports": {"http": {}, "kafka": topics.transport(broker.bootstrap, **kafka)},
              "shutdown_grace_s": 10}
    return await anyio.to_thread.run_sync(lambda: start_hostd(config))


async def test_every_model_replies_on_the_output_topic_with_the_same_key(start_tansu: StartTansu,
                                                                          start_hostd: Start) -> None:
    broker = start_tansu()
    topics = Topics.named("roundtrip")
    await topics.create(broker.bootstrap)
    server = await serve(start_hostd, broker, topics, REAL_MODELS)
    requests = every_model_requests()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:  # the same models over HTTP
        over_http = {rid: (await http.post(f"/api/models/{model}/prediction", json=data)).json()
                     for rid, (model, data) in requests.items()}

    await produce(broker.bootstrap, topics.input,
                  [(f"key-{rid}".encode(), request(rid, model, data)) for rid, (model, data) in requests.items()])
    async with Reader(broker.bootstrap, topics.output, topics.dead_letter) as reader:
        await reader.until(lambda: reader.answered >= set(requests), 30, "a reply to every request")
        await reader.past(topics.input)

    assert reader.on(topics.dead_letter) == []
    assert reader.ids() == Counter(set(requests)), "exactly one reply per request"
    replies = {}
    for record in reader.on(topics.output):
        reply = orjson.loads(record.value)
        replies[reply["id"]] = reply
        assert record.key == f"key-{reply['id']}".encode(), "the reply has the request's key"
    for rid, (model, _) in requests.items():
        reply = replies[rid]
        assert reply.keys() == {"id", "model", "version", "prediction"}
        assert (reply["model"], reply["version"]) == (model, "1.0.0")
        prediction, expected = reply["prediction"], over_http[rid]
        if model == "diabetes_model":  # `sample` is a random draw; the distribution is not
            assert prediction.keys() == expected.keys() == {"progression", "std", "sample"}
            assert prediction["progression"] == pytest.approx(expected["progression"])
            assert prediction["std"] == pytest.approx(expected["std"])
        else:
            assert prediction == expected, rid
    assert {i: replies[f"iris-{i}"]["prediction"]["species"] for i in SPECIES} == SPECIES
    digits = [int(d) for d in load_digits().target[:10]]
    assert [replies[f"digit-{i}"]["prediction"]["digit"] for i in range(10)] == digits


MALFORMED: dict[str, tuple[bytes | None, str, str]] = {
    # key: (value, error code, part of the message)
    "not-json": (b'{"id": "a", "model": ', "INVALID_INPUT", "not valid JSON"),
    "binary": (b"\xff\xfe\x00\x81", "INVALID_INPUT", "binary"),
    "not-an-object": (b"[1, 2, 3]", "INVALID_INPUT", "must be a JSON object"),
    "tombstone": (None, "INVALID_INPUT", "not valid JSON"),
    "unknown-model": (request("u1", "no_such_model", {"x": 1}), "MODEL_NOT_FOUND", "'no_such_model'"),
    "schema-error": (request("s1", "echo", {"x": "lots"}), "INVALID_INPUT", "x"),
    "missing-data": (orjson.dumps({"id": "m1", "model": "echo"}), "INVALID_INPUT", "'data' is required"),
    "model-raises": (request("r1", "echo", {"x": 1, "fail": True}), "MODEL_ERROR", "asked to fail"),
}


async def test_each_malformed_message_gives_exactly_one_dead_letter_with_the_original(
        start_tansu: StartTansu, start_hostd: Start) -> None:
    broker = start_tansu()
    topics = Topics.named("malformed")
    await topics.create(broker.bootstrap)
    await serve(start_hostd, broker, topics, [echo()])
    sent = await produce(broker.bootstrap, topics.input,
                         [(key.encode(), value) for key, (value, _, _) in MALFORMED.items()])
    where = {key: (meta.partition, meta.offset) for key, meta in zip(MALFORMED, sent, strict=True)}

    async with Reader(broker.bootstrap, topics.output, topics.dead_letter) as reader:
        await reader.until(lambda: len(reader.on(topics.dead_letter)) >= len(MALFORMED), 30, "every dead letter")
        # The stream carries on after failures: a good message sent afterwards is answered.
        await produce(broker.bootstrap, topics.input, [(b"good", request("g1", "echo", {"x": 21}))])
        await reader.until(lambda: bool(reader.on(topics.output)), 30, "the good message's reply")
        await reader.past(topics.input)

    [good] = reader.on(topics.output)
    assert (good.key, orjson.loads(good.value)) == (b"good", {"id": "g1", "model": "echo", "version": "1.0.0",
                                                              "prediction": {"y": 42.0, "text": ""}})
    letters = reader.on(topics.dead_letter)
    assert Counter(letter.key.decode() for letter in letters) == Counter(set(MALFORMED)), "one dead letter each"
    for letter in letters:
        key = letter.key.decode()
        value, code, message = MALFORMED[key]
        body = orjson.loads(letter.value)
        assert body["error"]["code"] == code, (key, body)
        assert message in body["error"]["message"], (key, body)
        assert (body["topic"], body["partition"], body["offset"]) == (topics.input, *where[key]), key
        if key == "binary":
            assert base64.b64decode(body["value_base64"]) == value
        else:
            assert body["value"] == (value or b"").decode()
    by_key = {letter.key.decode(): orjson.loads(letter.value) for letter in letters}
    assert by_key["schema-error"]["error"]["details"][0]["field"] == "x"
    assert "echo" in by_key["model-raises"]["error"]["message"], "the message names the model that failed"
    assert [by_key[key]["id"] for key in ("unknown-model", "schema-error", "model-raises")] == ["u1", "s1", "r1"]


async def test_a_dead_letter_carries_the_request_id(start_tansu: StartTansu, start_hostd: Start) -> None:
    """Like every envelope error reply: a parsed request's id comes back, whatever was wrong with it."""
    broker = start_tansu()
    topics = Topics.named("ids")
    await topics.create(broker.bootstrap)
    await serve(start_hostd, broker, topics, [echo()])
    bad: dict[str, dict[str, Any]] = {
        "no-data": {"model": "echo"},
        "no-model": {"data": {"x": 1}},
        "version-type": {"model": "echo", "version": 1, "data": {"x": 1}},
        "unknown": {"model": "nope", "data": {"x": 1}},
        "schema": {"model": "echo", "data": {}},
    }
    await produce(broker.bootstrap, topics.input, [(rid.encode(), orjson.dumps({"id": rid, **body}))
                                                   for rid, body in bad.items()])
    async with Reader(broker.bootstrap, topics.dead_letter) as reader:
        await reader.until(lambda: len(reader.records) >= len(bad), 30, "every dead letter")
    assert {r.key.decode(): orjson.loads(r.value)["id"] for r in reader.records} == {rid: rid for rid in bad}


async def test_a_model_that_raises_fails_only_its_own_message(start_tansu: StartTansu, start_hostd: Start) -> None:
    """One bad row in a poll must not dead-letter the good rows fetched with it."""
    broker = start_tansu()
    topics = Topics.named("isolation")
    await topics.create(broker.bootstrap)
    # Sent before hostd starts, on one key (one partition): the first poll fetches them together.
    messages = [(b"k", request(f"r{i}", "echo", {"x": i, "fail": i == 5})) for i in range(10)]
    await produce(broker.bootstrap, topics.input, messages)
    await serve(start_hostd, broker, topics, [echo()])
    async with Reader(broker.bootstrap, topics.output, topics.dead_letter) as reader:
        await reader.until(lambda: len(reader.records) >= 10, 30, "ten outcomes")
        await reader.past(topics.input)

    assert [orjson.loads(r.value)["id"] for r in reader.on(topics.dead_letter)] == ["r5"]
    assert [orjson.loads(r.value)["prediction"]["y"] for r in reader.on(topics.output)] == \
        [2.0 * i for i in range(10) if i != 5]


async def test_timeout_ms_applies_to_each_message_not_to_the_whole_poll(start_tansu: StartTansu,
                                                                        start_hostd: Start) -> None:
    """400 messages of 5 ms each, with timeout_ms 1000: each is well within its limit."""
    broker = start_tansu()
    topics = Topics.named("timeouts")
    await topics.create(broker.bootstrap)
    count = 400
    await produce(broker.bootstrap, topics.input,
                  [(b"k", request(str(i), "echo", {"x": 1, "delay_ms": 5})) for i in range(count)])
    await serve(start_hostd, broker, topics, [echo(timeout_ms=1000)])
    async with Reader(broker.bootstrap, topics.output, topics.dead_letter) as reader:
        await reader.until(lambda: len(reader.answered) >= count, 30, f"{count} outcomes")
    codes = Counter(orjson.loads(r.value)["error"]["code"] for r in reader.on(topics.dead_letter))
    assert not codes, f"messages of 5 ms were dead-lettered: {dict(codes)}"
    assert len(reader.on(topics.output)) == count


async def until_all_consume(broker: Tansu, topics: Topics, servers: list[HostdProcess], keys: int,
                            timeout: float = 60) -> None:
    """Warm up until every hostd has predicted rows: the group has settled and each owns partitions."""
    deadline = time.monotonic() + timeout
    for round_ in itertools.count():
        rows = [await rows_predicted(server, "iris_model") for server in servers]
        if all(rows):
            return
        assert time.monotonic() < deadline, f"not every consumer got partitions: rows {rows}"
        await produce(broker.bootstrap, topics.input,
                      [(f"k{key}".encode(), request(f"warm-{round_}-{key}", "iris_model", iris_payload(0)))
                       for key in range(keys)])
        await anyio.sleep(0.5)  # between rounds of warm-up messages, while the group settles


@pytest.mark.timeout(180)
async def test_ten_thousand_messages_two_consumers_none_lost_in_key_order(start_tansu: StartTansu,
                                                                          start_hostd: Start) -> None:
    total, keys = 10_000, 40
    broker = start_tansu()
    topics = Topics.named("load")
    await topics.create(broker.bootstrap)
    models = [{"class_path": "iris_model.model:IrisModel", "workers": {"count": 2}}]
    servers = [await serve(start_hostd, broker, topics, models) for _ in range(2)]
    await until_all_consume(broker, topics, servers, keys)
    rows_before = [await rows_predicted(server, "iris_model") for server in servers]
    flower = iris_payload(50)
    bad = {**flower, "petal_length": 70.0}  # 1 in 100 fails the schema: a dead letter, still counted
    wanted = {str(i) for i in range(total)}

    def message(i: int) -> tuple[bytes, bytes]:
        return f"k{i % keys}".encode(), request(str(i), "iris_model", bad if i % 100 == 7 else flower)

    started = time.monotonic()
    await produce(broker.bootstrap, topics.input, (message(i) for i in range(total)), timeout=60)
    async with Reader(broker.bootstrap, topics.output, topics.dead_letter) as reader:
        await reader.until(lambda: reader.answered >= wanted, 120, f"{total} outcomes")
        elapsed = time.monotonic() - started
        await reader.past(topics.input)

    ids = Counter({rid: count for rid, count in reader.ids().items() if not rid.startswith("warm-")})
    assert set(ids) == wanted, "every message answered"
    duplicates = sum(ids.values()) - total
    print(f"\nkafka: {total} messages in {elapsed:.1f}s = {total / elapsed:.0f} predictions/s end to end "
          f"(2 hostd, 4 partitions); duplicates: {duplicates}")
    dead = [orjson.loads(r.value) for r in reader.on(topics.dead_letter)]
    assert sorted(int(letter["id"]) for letter in dead) == [i for i in range(total) if i % 100 == 7]
    assert {letter["error"]["code"] for letter in dead} == {"INVALID_INPUT"}
    # Both consumers took part (the group split the partitions); each reply is one row predicted.
    rows = [await rows_predicted(server, "iris_model") for server in servers]
    assert all(after > before for after, before in zip(rows, rows_before, strict=True)), (rows_before, rows)
    assert sum(rows) == len(reader.on(topics.output))
    # Per key, replies come out in the order the requests went in.
    for key in range(keys):
        replies = sorted((r for r in reader.on(topics.output) if r.key == f"k{key}".encode()),
                         key=lambda r: (r.partition, r.offset))
        assert len({r.partition for r in replies}) == 1, "one key, one output partition"
        order = [int(rid) for r in replies if not (rid := orjson.loads(r.value)["id"]).startswith("warm-")]
        assert order == sorted(order), f"key k{key} answered out of order"
    assert duplicates == 0, "the group was settled and nothing crashed: nothing may be redone"


async def ids_answered(bootstrap: str, topics: Topics, wanted: set[str], timeout: float) -> Counter[str]:
    async with Reader(bootstrap, topics.output, topics.dead_letter) as reader:
        await reader.until(lambda: reader.answered >= wanted, timeout, f"{len(wanted)} answers")
        await reader.past(topics.input)
        codes = Counter(orjson.loads(r.value)["error"]["code"] for r in reader.on(topics.dead_letter))
        assert not codes, f"every message was valid, yet dead letters came out: {dict(codes)}"
        return reader.ids()


async def count_outputs(bootstrap: str, topic: str, at_least: int, timeout: float) -> int:
    async with Reader(bootstrap, topic) as reader:
        await reader.until(lambda: len(reader.records) >= at_least, timeout, f"{at_least} outputs")
        return len(reader.records)


def held_back(start: int, count: int, held_from: int, gate: Path) -> list[tuple[bytes, bytes]]:
    """Echo messages on eight keys; from id ``held_from`` on they wait in the model for ``gate``."""
    def data(i: int) -> dict[str, Any]:
        return {"x": i % 500, "gate": str(gate) if i >= held_from else ""}

    return [(f"k{i % 8}".encode(), request(str(i), "echo", data(i))) for i in range(start, start + count)]


@pytest.mark.timeout(180)
async def test_a_consumer_killed_mid_stream_loses_nothing(start_tansu: StartTansu, start_hostd: Start,
                                                          tmp_path: Path) -> None:
    total = 4000
    broker = start_tansu()
    topics = Topics.named("kill")
    await topics.create(broker.bootstrap)
    first = await serve(start_hostd, broker, topics, [echo()])
    # The last thousand wait for a gate that opens only after the kill: it lands mid-stream.
    gate = tmp_path / "gate"
    await produce(broker.bootstrap, topics.input, held_back(0, total, 3000, gate))
    answered_before = await count_outputs(broker.bootstrap, topics.output, 600, 60)
    await anyio.to_thread.run_sync(wait_for, lambda: pending(first.url) > 0, "nothing reached the model")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    gate.touch()

    await serve(start_hostd, broker, topics, [echo()])
    ids = await ids_answered(broker.bootstrap, topics, {str(i) for i in range(total)}, 120)
    duplicates = sum(ids.values()) - total
    print(f"\nkafka SIGKILL: {answered_before} answered before the kill; duplicates after restart: {duplicates}")
    # Redone at most: what the killed consumer had answered but not yet committed, one batch per poll.
    assert duplicates <= MAX_BATCH


@pytest.mark.timeout(120)
async def test_a_consumer_stopped_with_sigterm_leaves_the_rest_to_the_next(start_tansu: StartTansu,
                                                                           start_hostd: Start) -> None:
    """A clean shutdown answers what it took and leaves the rest unanswered and uncommitted:
    nothing is dead-lettered as NOT_READY while the daemon drains."""
    total = 300
    broker = start_tansu()
    topics = Topics.named("sigterm")
    await topics.create(broker.bootstrap)
    first = await serve(start_hostd, broker, topics, [echo()])
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        # A trickle, as in production (the pace is the behaviour under test): the consumer is often
        # waiting in a poll when the signal comes.
        for i in range(total):
            if i == 50:  # mid-stream: the first 50 are answered, the rest keep coming
                await count_outputs(broker.bootstrap, topics.output, 50, 30)
                first.proc.send_signal(signal.SIGTERM)
            await producer.send_and_wait(topics.input, request(str(i), "echo", {"x": i}), key=f"k{i % 4}".encode())
            await anyio.sleep(0.01)
    finally:
        await producer.stop()
    assert await anyio.to_thread.run_sync(first.proc.wait, 15) == 0

    await serve(start_hostd, broker, topics, [echo()])
    ids = await ids_answered(broker.bootstrap, topics, {str(i) for i in range(total)}, 60)
    assert sum(ids.values()) == total, "a clean shutdown commits what it answered: nothing is redone"


@pytest.mark.timeout(180)
async def test_a_broker_restart_mid_stream_loses_nothing(start_tansu: StartTansu, start_hostd: Start,
                                                         tmp_path: Path) -> None:
    half = 2000
    broker = start_tansu("s3")  # durable: topics, messages and offsets survive the restart
    topics = Topics.named("restart")
    await topics.create(broker.bootstrap)
    server = await serve(start_hostd, broker, topics, [echo()])
    # The second thousand wait for a gate that opens only once the broker is back: mid-stream.
    gate = tmp_path / "gate"
    await produce(broker.bootstrap, topics.input, held_back(0, half, 1000, gate))
    answered_before = await count_outputs(broker.bootstrap, topics.output, 300, 60)
    await anyio.to_thread.run_sync(wait_for, lambda: pending(server.url) > 0, "nothing reached the model")
    await anyio.to_thread.run_sync(lambda: broker.restart(down_s=2))  # an outage of 2 s, the behaviour under test
    gate.touch()
    await produce(broker.bootstrap, topics.input, held_back(half, half, 2 * half, gate), timeout=60)

    ids = await ids_answered(broker.bootstrap, topics, {str(i) for i in range(2 * half)}, 120)
    print(f"\nkafka broker restart: {answered_before} answered before; duplicates: {sum(ids.values()) - 2 * half}")


async def test_ready_while_the_broker_is_down_then_consumes_once_it_is_up(start_tansu: StartTansu,
                                                                          start_hostd: Start) -> None:
    broker = start_tansu(start=False)
    topics = Topics.named("late")
    server = await serve(start_hostd, broker, topics, [echo()])  # waits for /api/health/ready
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        await anyio.to_thread.run_sync(wait_for, lambda: logged(server, "kafka unavailable; retrying") >= 2,
                                       "hostd never retried the broker")  # a few failed connection attempts
        assert server.proc.poll() is None
        assert (await http.get("/api/health/ready")).status_code == 200
        response = await http.post("/api/models/echo/prediction", json={"x": 4})
        assert (response.status_code, response.json()) == (200, {"y": 8.0, "text": ""})

    await anyio.to_thread.run_sync(broker.start)
    await topics.create(broker.bootstrap)
    await produce(broker.bootstrap, topics.input, [(f"k{i}".encode(), request(str(i), "echo", {"x": i}))
                                                   for i in range(20)])
    ids = await ids_answered(broker.bootstrap, topics, {str(i) for i in range(20)}, 40)
    assert ids == Counter(str(i) for i in range(20))
