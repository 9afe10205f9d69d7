"""Where the prediction log's records go: files (JSONL, or Parquet with pyarrow) or a Kafka topic."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import orjson

if TYPE_CHECKING:
    from hostd.predictionlog import Entry
    from hostd.settings import HostSettings, PredictionLogSettings

#: How many of the newest files a late label is looked for in (read in CHUNK pieces, in a thread).
LATE_LABEL_FILES = 4
CHUNK = 1 << 20
NOT_FOUND_KEPT = 10_000  # ids looked for in vain, not looked for again
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
        self._part: Path | None = None  # the Parquet file being written
        self._opened = 0.0
        self._bytes = 0
        self._sequence = itertools.count()
        self._finding = asyncio.Lock()
        self._not_found: OrderedDict[str, None] = OrderedDict()
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

            self._part = self._path.with_suffix(".parquet.part")
            self._file = pq.ParquetWriter(self._part, _parquet_schema())

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
        if self._part is not None and self._path is not None:
            self._part.rename(self._path)
        self._file, self._part = None, None
        self._prune()

    def _prune(self) -> None:
        """Delete the oldest complete files beyond ``max_files``: a log nobody collects must not fill the disk."""
        if self.settings.max_files is None:
            return
        files = sorted(self.directory.glob(f"predictions-*.{self.settings.format}"), key=_mtime)
        stale = [path for path in self.directory.glob("predictions-*.parquet.part") if path != self._part]
        for path in [*files[:max(0, len(files) - self.settings.max_files)], *stale]:  # .part: left by a crash
            path.unlink(missing_ok=True)

    async def find(self, request_id: str) -> dict[str, Any] | None:
        """The record of ``request_id`` in the newest JSONL files (a label that came late). Best effort,
        as a client can ask for it cheaply: one lookup at a time (None at once while one runs), an id
        looked for in vain is not looked for again, and the files are read in 1 MiB chunks in a thread
        (each search a C call short enough for the event loop to get the GIL back between them)."""
        if self.settings.format != "jsonl" or self._finding.locked() or request_id in self._not_found:
            return None
        async with self._finding:
            found = await anyio.to_thread.run_sync(self._find, request_id)
        if found is None:
            self._not_found[request_id] = None
            if len(self._not_found) > NOT_FOUND_KEPT:
                self._not_found.popitem(last=False)
        return found

    def _find(self, request_id: str) -> dict[str, Any] | None:
        needle = orjson.dumps({"request_id": request_id})[1:-1]  # "request_id":"..." as the records have it
        files = sorted(self.directory.glob("predictions-*.jsonl"), key=_mtime, reverse=True)
        for path in files[:LATE_LABEL_FILES]:
            line = _line_with(path, needle)
            if line is None:
                continue
            try:  # a line cut short (a full disk, a crash mid-write) is no record
                found = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(found, dict) and found.get("request_id") == request_id:
                return found
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # pruned meanwhile
        return 0.0


def _line_with(path: Path, needle: bytes) -> bytes | None:
    """The line of ``path`` holding ``needle``, read a chunk at a time (a needle cut by a chunk's end is
    found in the next one: each chunk starts with the last line of the one before)."""
    try:
        with path.open("rb") as file:
            carry = b""
            while chunk := file.read(CHUNK):
                data = carry + chunk
                at = data.find(needle)
                if at >= 0:
                    start = data.rfind(b"\n", 0, at) + 1
                    end = data.find(b"\n", at)
                    while end < 0 and (more := file.read(CHUNK)):  # the rest of a long line
                        data += more
                        end = data.find(b"\n", at)
                    return data[start:end if end >= 0 else len(data)]
                carry = data[data.rfind(b"\n") + 1:]
    except OSError:
        return None
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
            if len(key) + len(value) > self.settings.max_record_bytes:  # the broker would fail its whole batch
                refused += 1
                continue
            if batch.append(key=key, value=value, timestamp=None) is not None:
                continue
            if batch.record_count():  # full: send it, start the next with this record
                sent.append(await producer.send_batch(batch, self.settings.topic,
                                                      partition=partitions[next(self._turn) % len(partitions)]))
                batch = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any record
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
                                        max_request_size=self.settings.max_record_bytes + 4096, **self.security)
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
