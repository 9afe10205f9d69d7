"""Where the prediction log's records go: files (JSONL, or Parquet with pyarrow) or a Kafka topic."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import orjson

if TYPE_CHECKING:
    from hostd.predictionlog import Entry
    from hostd.settings import HostSettings, PredictionLogSettings

#: How many of the newest files a late label is looked for in (each read whole, in a thread).
LATE_LABEL_FILES = 4
REQUEST_TIMEOUT_MS = 5000  # a broker that does not answer fails the batch in 5 s (aiokafka's default: 40)


class Sink(Protocol):
    async def write(self, entries: Sequence[Entry]) -> int:
        """Write ``entries``; how many of them it refused one by one (too big for the sink). Raises if
        the sink failed (the whole batch is tried again)."""
    async def close(self) -> None: ...


class FileSink:
    """Files named ``predictions-<UTC time>-<n>.jsonl`` (or ``.parquet``) in ``path``, a new one when the
    current one reaches ``rotate_bytes`` or ``rotate_s``. A Parquet file is ``.parquet.part`` until it is
    complete (its footer written), so a reader never opens half of one. Writes run in a thread."""

    def __init__(self, settings: PredictionLogSettings, folder: Path) -> None:
        self.directory = folder / settings.path
        self.settings = settings
        self._file: Any = None  # the open file (jsonl) or pyarrow ParquetWriter
        self._path: Path | None = None
        self._opened = 0.0
        self._bytes = 0
        self._sequence = itertools.count()
        if settings.format == "parquet":
            import pyarrow  # noqa: F401  # checked at start: the config asks for what is not installed

    async def write(self, entries: Sequence[Entry]) -> int:
        await anyio.to_thread.run_sync(self._write, entries)
        return 0

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._close)

    def _write(self, entries: Sequence[Entry]) -> None:
        if self._file is not None and (self._bytes >= self.settings.rotate_bytes or (
                self.settings.rotate_s is not None and time.monotonic() - self._opened >= self.settings.rotate_s)):
            self._close()
        if self._file is None:
            self._open()
        lines = [entry.line for entry in entries]
        if self.settings.format == "jsonl":
            data = b"".join(line + b"\n" for line in lines)
            self._file.write(data)
            self._file.flush()
            self._bytes += len(data)
        else:
            self._bytes += self._write_parquet(lines)

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self._path = self.directory / f"predictions-{stamp}-{next(self._sequence)}.{self.settings.format}"
        self._opened, self._bytes = time.monotonic(), 0
        if self.settings.format == "jsonl":
            self._file = self._path.open("ab")
        else:
            import pyarrow.parquet as pq

            self._file = pq.ParquetWriter(self._path.with_suffix(".parquet.part"), _parquet_schema())

    def _write_parquet(self, lines: list[bytes]) -> int:
        import pyarrow as pa

        columns: dict[str, list[Any]] = {name: [] for name in _parquet_schema().names}
        for line in lines:
            record = orjson.loads(line)
            for name in ("inputs", "outputs", "error"):  # schema-free parts: JSON text columns
                record[name] = orjson.dumps(record[name]).decode() if record[name] is not None else None
            for name, values in columns.items():
                values.append(record[name])
        self._file.write_table(pa.table(columns, schema=_parquet_schema()))
        return sum(len(line) for line in lines)

    def _close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        if self.settings.format == "parquet" and self._path is not None:
            self._path.with_suffix(".parquet.part").rename(self._path)
        self._file = None
        self._prune()

    def _prune(self) -> None:
        """Delete the oldest complete files beyond ``max_files``: a log nobody collects must not fill the disk."""
        if self.settings.max_files is None:
            return
        files = sorted(self.directory.glob(f"predictions-*.{self.settings.format}"), key=lambda p: p.stat().st_mtime)
        for path in files[:max(0, len(files) - self.settings.max_files)]:
            path.unlink(missing_ok=True)

    async def find(self, request_id: str) -> dict[str, Any] | None:
        """The record of ``request_id`` in the newest JSONL files (a label that came late)."""
        if self.settings.format != "jsonl":
            return None
        return await anyio.to_thread.run_sync(self._find, request_id)

    def _find(self, request_id: str) -> dict[str, Any] | None:
        needle = orjson.dumps({"request_id": request_id})[1:-1]  # "request_id":"..." as the records have it
        files = sorted(self.directory.glob("predictions-*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
        for path in files[:LATE_LABEL_FILES]:
            for line in path.read_bytes().splitlines():
                if needle in line:
                    found: dict[str, Any] = orjson.loads(line)
                    if found.get("request_id") == request_id:
                        return found
        return None


def _parquet_schema() -> Any:
    import pyarrow as pa

    text = pa.string()
    return pa.schema([("request_id", text), ("time", text), ("model", text), ("version", text),
                      ("transport", text), ("inputs", text), ("outputs", text), ("error", text),
                      ("latency_ms", pa.float64()), ("cached", pa.bool_()), ("trace_id", text)])


class KafkaSink:
    """Records on a topic, keyed by request id, each batch acknowledged by every in-sync replica
    (acks=all) before it counts as written, as the Kafka transport produces its replies."""

    def __init__(self, settings: PredictionLogSettings, bootstrap_servers: str, security: dict[str, Any]) -> None:
        self.settings = settings
        self.bootstrap_servers = bootstrap_servers
        self.security = security
        self._producer: Any = None
        self._turn = itertools.count()  # the next batch's partition, in turn

    async def write(self, entries: Sequence[Entry]) -> int:
        """Records packed into as few Kafka batches as fit (aiokafka's send() per record costs ~30 µs of
        the event loop's time), the batches spread over the topic's partitions in turn."""
        producer = await self._started()
        partitions = sorted(await producer.partitions_for(self.settings.topic))
        sent, refused, batch = [], 0, producer.create_batch()
        for entry in entries:
            value, key = entry.line, entry.request_id.encode()
            if batch.append(key=key, value=value, timestamp=None) is not None:
                continue
            if batch.record_count():  # full: send it, start the next with this record
                sent.append(await producer.send_batch(batch, self.settings.topic,
                                                      partition=partitions[next(self._turn) % len(partitions)]))
                batch = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                refused += 1  # bigger than a batch may be: one huge request must not sink the others
        if batch.record_count():
            sent.append(await producer.send_batch(batch, self.settings.topic,
                                                  partition=partitions[next(self._turn) % len(partitions)]))
        for ack in sent:
            await ack
        return refused

    async def _started(self) -> Any:
        if self._producer is None:
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all",
                                        client_id="hostd-prediction-log", request_timeout_ms=REQUEST_TIMEOUT_MS,
                                        **self.security)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def make_sink(settings: PredictionLogSettings, host: HostSettings) -> FileSink | KafkaSink:
    """The sink ``settings`` name. The Kafka sink uses the kafka transport's brokers and security when it
    names no brokers of its own."""
    if settings.sink == "file":
        return FileSink(settings, host.folder)
    bootstrap = settings.bootstrap_servers or host.shared("kafka", "bootstrap_servers") or "127.0.0.1:9092"
    transport: Any = host.transports.get("kafka")
    security = {}
    if settings.bootstrap_servers is None and hasattr(transport, "security"):
        security = transport.security(host.folder)
    return KafkaSink(settings, bootstrap, security)
