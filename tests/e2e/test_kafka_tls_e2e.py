"""The Kafka transport over TLS (issue 15): hostd's consumer and producer reach the broker only through
a TLS endpoint whose certificate a test CA signs.

Tansu 0.6.0 serves no TLS itself (with ``--cert`` its listener still speaks plaintext), so TLS is
terminated in front of it, as a service mesh or a cloud load balancer would: Tansu advertises the TLS
endpoint, so every connection a client makes after bootstrapping goes through it too.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import orjson
import pytest
import trustme
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.conftest import free_port
from tests.e2e.brokers import TANSU, Tansu, Topics, request
from tests.support.e2e import PATIENCE_S, Start, iris_payload

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


@asynccontextmanager
async def tls_front(port: int, upstream: int, context: ssl.SSLContext) -> AsyncIterator[None]:
    """TLS on 127.0.0.1:``port``, each connection piped to the plaintext 127.0.0.1:``upstream``."""
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    writers: set[asyncio.StreamWriter] = set()
    handlers: set[asyncio.Task[None]] = set()

    async def connection(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        writers.add(client_writer)
        broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", upstream)
        writers.add(broker_writer)
        await asyncio.gather(pipe(client_reader, broker_writer), pipe(broker_reader, client_writer))

    server = await asyncio.start_server(connection, "127.0.0.1", port, ssl=context)
    try:
        yield
    finally:
        # Server.close() closes only the listener: the piped connections are closed here, or their
        # sockets would be collected unclosed later, failing whichever test then runs (ResourceWarning).
        server.close()
        for task in handlers:
            task.cancel()
        for writer in writers:
            writer.close()
        await asyncio.wait(handlers | {asyncio.create_task(server.wait_closed())}, timeout=PATIENCE_S)


async def test_requests_and_replies_go_over_tls(start_hostd: Start, tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    plain, secure = free_port(), free_port()
    broker = Tansu("tansu-tls", lambda port: [
        str(TANSU), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url", f"tcp://127.0.0.1:{secure}", "--storage-engine", "memory://tansu/"],
        tmp_path / "tansu.log", port=plain)
    broker.start()
    topics = Topics.named("tls")
    bootstrap = f"127.0.0.1:{secure}"
    tls_client = {"security_protocol": "SSL", "ssl_context": client_context}
    try:
        async with tls_front(secure, plain, server_context):
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **tls_client)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(name, 1, 1) for name in (topics.input, topics.output,
                                                                              topics.dead_letter)])
            finally:
                await admin.close()
            config = {"models": [{"class_path": "iris_model.model:IrisModel"}], "transports": {
                "http": {}, "kafka": topics.transport(bootstrap, security_protocol="SSL",
                                                      ssl_cafile=str(tmp_path / "ca.pem"))}}
            await anyio.to_thread.run_sync(lambda: start_hostd(config))
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **tls_client)
            await producer.start()
            try:
                await producer.send_and_wait(topics.input, request("r-1", "iris_model", iris_payload()), key=b"k")
            finally:
                await producer.stop()
            consumer = AIOKafkaConsumer(topics.output, bootstrap_servers=bootstrap, group_id=None,
                                        auto_offset_reset="earliest", **tls_client)
            await consumer.start()
            try:
                with anyio.fail_after(PATIENCE_S):
                    record = await consumer.getone()
            finally:
                await consumer.stop()
        assert (record.key, orjson.loads(record.value)["prediction"]) == (b"k", {"species": "Iris setosa"})
    finally:
        broker.kill()
