"""One connected session: consume a batch, predict it, produce the outputs, commit, repeat."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections import defaultdict
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from hostd import envelope, tracing
from hostd.dataplane import DataPlane, Prediction
from hostd.errors import HostdError, NotReady, PayloadTooLarge
from hostd.transports import Shutdown

if TYPE_CHECKING:
    from hostd_kafka.plugin import KafkaSettings

Headers = list[tuple[str, bytes]]
Output = tuple[str, bytes | None, bytes, Headers]  # topic, key, value, headers (the trace's, if traced)
Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
POLL_MS = 1000  # how long an idle poll waits for records (a stop cuts it short)


class Stream:
    def __init__(self, dataplane: DataPlane, settings: KafkaSettings, security: dict[str, Any] | None = None) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.batch_lock = anyio.Lock()  # held while a batch is in flight; a rebalance waits for it
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, group_id=settings.group_id,
            client_id=settings.client_id, enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=settings.max_message_bytes, **(security or {}),
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers, client_id=settings.client_id, acks="all",
            max_request_size=settings.max_message_bytes + 4096, **(security or {}),
        )

    async def run(self, stop: Shutdown, connected: Callable[[], None]) -> None:
        await self.producer.start()
        await self.consumer.start()
        topics = [self.settings.input_topic, *filter(None, [self.settings.feedback_topic])]
        self.consumer.subscribe(topics, listener=_FinishBatchFirst(self.batch_lock))
        connected()
        while not stop.is_set():
            batches = await self.poll(stop)
            async with self.batch_lock:
                if stop.is_set() or not await self.process(batches):
                    return  # shutting down: what was fetched and not committed goes to the next consumer

    async def poll(self, stop: Shutdown) -> Batches:
        """The records fetched, waiting up to POLL_MS for some; nothing, at once, when ``stop`` is set.
        (A poll cut short loses nothing: what it had fetched is uncommitted, so read again.)"""
        batches: Batches = {}
        async with anyio.create_task_group() as tg:
            async def fetch() -> None:
                nonlocal batches
                batches = await self.consumer.getmany(timeout_ms=POLL_MS, max_records=self.settings.max_batch)
                tg.cancel_scope.cancel()

            tg.start_soon(fetch)
            await stop.wait()
            tg.cancel_scope.cancel()
        return batches

    async def close(self) -> None:
        await _abandon_group_join(self.consumer)
        for client in (self.consumer, self.producer):
            with suppress(Exception):  # closing after a failure: nothing more to do
                await client.stop()

    async def process(self, batches: Batches) -> bool:
        """Answer, produce, commit; False (nothing produced or committed) if hostd is draining."""
        records = [record for partition in batches.values() for record in partition]
        if not records:
            return True
        try:
            outputs = await self.answer(records)
        except NotReady:
            return False
        # Send in input order (aiokafka keeps per-partition order), then wait for every ack.
        acks = [await self.producer.send(topic, value, key=key, headers=headers or None)
                for topic, key, value, headers in outputs]
        for ack in acks:
            await ack
        await self.consumer.commit({tp: part[-1].offset + 1 for tp, part in batches.items() if part})
        return True

    async def answer(self, records: list[ConsumerRecord[bytes, bytes]]) -> list[Output]:
        """One output per record (none for a label taken), in record order; predictions grouped per model
        into batch calls."""
        # Each record's span (hostd.tracing), continued from its traceparent header; None when tracing is off.
        spans = [_begin_span(record) for record in records] if tracing.enabled() else [None] * len(records)
        try:
            answered = await self._answer(records, spans)
        except BaseException as exc:  # draining (NotReady): the batch goes to the next consumer, its spans end
            for span in spans:
                tracing.end(span, tracing.code_of(exc))
            raise
        if tracing.enabled():
            return _traced(answered, spans, self.settings.dead_letter_topic)
        return [output for output in answered if output is not None]

    async def _answer(self, records: list[ConsumerRecord[bytes, bytes]], spans: list[Any]) -> list[Output | None]:
        outputs: list[Output | None] = [None] * len(records)
        groups: dict[tuple[str, str | None, bool], list[tuple[int, envelope.Call]]] = defaultdict(list)
        for index, record in enumerate(records):
            request: dict[str, Any] = {}
            try:
                request = envelope.parse(record.value or b"", self.settings.max_message_bytes)
                self._check_key(record)
                if record.topic == self.settings.feedback_topic:
                    request.setdefault("op", "feedback")
                call = envelope.prediction(request)
            except HostdError as exc:
                self.dataplane.rejected("kafka", exc, request.get("model"))
                outputs[index] = self.dead_letter(record, request.get("id"), exc)
                continue
            if call is None:  # another op: answered as on every envelope transport
                with tracing.current(spans[index]):
                    answered = await envelope.answer(self.dataplane, request, "kafka")
                if request.get("op") != "feedback" or "error" in answered:  # a label taken needs no reply
                    outputs[index] = self.reply(record, answered)
            else:
                groups[call.model, call.version, call.cache].append((index, call))
        for (model, version, cache), calls in groups.items():
            with tracing.fan_out([spans[index] for index, _ in calls]):
                results = await self.dataplane.predict_each(model, [call.data for _, call in calls], version,
                                                            transport="kafka", use_cache=cache,
                                                            request_ids=[call.request_id for _, call in calls])
            for (index, call), result in zip(calls, results, strict=True):
                outputs[index] = self.outcome(records[index], call, result)
        return outputs

    def outcome(self, record: ConsumerRecord[bytes, bytes], call: envelope.Call,
                result: Prediction | HostdError) -> Output:
        if isinstance(result, NotReady):
            raise result  # draining: leave the batch uncommitted for the next consumer
        if isinstance(result, HostdError):
            return self.dead_letter(record, call.id, result)
        return self.reply(record, envelope.prediction_reply(call.id, result))

    def reply(self, record: ConsumerRecord[bytes, bytes], reply: dict[str, Any]) -> Output:
        if "error" in reply:
            return (self.settings.dead_letter_topic, self._key(record), self._dead_letter_value(record, reply), [])
        value = envelope.encode(reply)
        if len(value) > self._room(record):  # the producer would refuse it and fail the whole batch
            too_big = PayloadTooLarge(f"the reply is {len(value)} bytes; the limit is {self._room(record)}")
            return self.dead_letter(record, reply.get("id"), too_big)
        return (self.settings.output_topic, self._key(record), value, [])

    def dead_letter(self, record: ConsumerRecord[bytes, bytes], request_id: Any, exc: HostdError) -> Output:
        reply = envelope.error_reply(request_id, exc)
        return (self.settings.dead_letter_topic, self._key(record), self._dead_letter_value(record, reply), [])

    def _check_key(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.key is not None and len(record.key) > self.settings.max_key_bytes:
            raise PayloadTooLarge(f"the record key is {len(record.key)} bytes; the limit is "
                                  f"{self.settings.max_key_bytes} (max_key_bytes)")

    def _key(self, record: ConsumerRecord[bytes, bytes]) -> bytes | None:
        """The output's key: the record's, or its SHA-256 if it is too long to copy (the same for
        every output of that key, so they still share a partition)."""
        if record.key is None or len(record.key) <= self.settings.max_key_bytes:
            return record.key
        return hashlib.sha256(record.key).hexdigest().encode()

    def _room(self, record: ConsumerRecord[bytes, bytes]) -> int:
        # Outputs are held to the input limit (a consumer sized for the inputs reads them); the
        # producer's max_request_size leaves room for the record's own overhead on top.
        return self.settings.max_message_bytes - len(self._key(record) or b"")

    def _dead_letter_value(self, record: ConsumerRecord[bytes, bytes], reply: dict[str, Any]) -> bytes:
        where: dict[str, Any] = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        if record.key is not None and self._key(record) != record.key:
            where |= {"key_truncated": True, "key_bytes": len(record.key),
                      "key_sha256": hashlib.sha256(record.key).hexdigest()}
        return bounded_dead_letter({**reply, **where}, record.value or b"", self._room(record))


def bounded_dead_letter(letter: dict[str, Any], value: bytes, room: int) -> bytes:
    """The dead letter with the original ``value``, cut short (and saying so) to fit in ``room`` bytes."""
    encoded = orjson.dumps({**letter, **_original(value, len(value))})
    if len(encoded) <= room:
        return encoded
    facts = {"value_truncated": True, "value_bytes": len(value), "value_sha256": hashlib.sha256(value).hexdigest()}
    empty = len(orjson.dumps({**letter, **_original(value, 0), **facts}))
    if empty > room:  # the error itself is too big (a huge id or message): keep its code only
        error = {**letter["error"], "message": letter["error"]["message"][:1000], "details": []}
        return orjson.dumps({**letter, "id": None, "error": error, **_original(value, 0), **facts})
    kept = len(value)
    while len(encoded) > room:
        # Keep the share of the value that fits (escaping makes some bytes cost more than others).
        kept = min(kept - 1, kept * (room - empty) // (len(encoded) - empty))
        encoded = orjson.dumps({**letter, **_original(value, kept), **facts})
    return encoded


def _original(value: bytes, kept: int) -> dict[str, str]:
    """The first ``kept`` bytes of ``value``: as text if all of it is UTF-8, else as base64."""
    try:
        value.decode()
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(value[:kept]).decode()}
    return {"value": value[:kept].decode(errors="ignore")}  # a cut may split the last character


async def _abandon_group_join(consumer: AIOKafkaConsumer) -> None:
    """Stop the consumer's group coordination task, so that ``consumer.stop()`` does not wait for it.

    aiokafka's stop() first lets that task finish its work, and a task joining the group waits for
    the broker's JoinGroup reply: the group's initial rebalance delay (3 s on Kafka, ~5 s on Tansu)
    or, in a rebalance, until every other member has rejoined. That held every shutdown up by ~4 s.
    Nothing is lost by cutting it short: auto-commit is off and every batch answered was committed
    before run() returned (a consumer still joining owns no partitions), and stop() still sends
    LeaveGroup if the consumer was a member, so its partitions move to the others at once.
    """
    # aiokafka's private attributes (as of 0.14): if they move, stop() only waits for the join again.
    task = getattr(getattr(consumer, "_coordinator", None), "_coordination_task", None)
    if isinstance(task, asyncio.Task) and not task.done():
        task.cancel()
        await asyncio.wait([task])  # returns once it has stopped; its cancellation stays in it


def _begin_span(record: ConsumerRecord[bytes, bytes]) -> Any:
    """A record's span: "process <topic>", a consumer span continuing its ``traceparent`` header."""
    headers = {key: value for key, value in record.headers or () if key in ("traceparent", "tracestate")}
    return tracing.begin(f"process {record.topic}", "kafka", headers, kind="consumer", **{
        "messaging.system": "kafka", "messaging.destination.name": record.topic,
        "messaging.kafka.offset": record.offset, "messaging.destination.partition.id": str(record.partition)})


def _traced(outputs: list[Output | None], spans: list[Any], dead_letters: str) -> list[Output]:
    """End each record's span with its outcome; its output carries the trace on, in its own headers."""
    traced: list[Output] = []
    for output, span in zip(outputs, spans, strict=True):
        if output is None:  # a label taken: nothing to send
            tracing.end(span, "OK")
            continue
        topic, key, value, _ = output
        code = orjson.loads(value).get("error", {}).get("code", "INVALID_INPUT") if topic == dead_letters else "OK"
        with tracing.current(span):
            carrier = tracing.inject({})
        tracing.end(span, code)
        traced.append((topic, key, value, [(name, text.encode()) for name, text in carrier.items()]))
    return traced


class _FinishBatchFirst(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move, let the batch in flight finish and commit (so nothing is redone)."""

    def __init__(self, lock: anyio.Lock) -> None:
        self.lock = lock

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.lock:
            pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        pass
