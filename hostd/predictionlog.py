"""The prediction log (data capture): one record per sampled request, on every transport, errors included.

Off the request's path: a request only appends a ``Record`` (references, no serialising) to a bounded
buffer; ``PredictionLog.run`` (a task the daemon owns) hands batches to the sink (hostd.logsinks).

What is lost, and when (each record lost is counted in ``hostd_prediction_log_records{outcome="dropped"}``
and warned about, at most once per 10 s):
- the buffer is full (the sink is slow or down): the new record is dropped; requests are not slowed;
- the sink fails: the batch is retried with backoff for ~4 s (at least once: a batch the sink took
  part of may be written twice), new records filling the buffer meanwhile; then the batch and the
  buffer are dropped, and so is every record of the next ``DOWN_S`` (not buffered, no reconnecting);
- hostd stops: what the sink has not taken within ``shutdown_grace_s`` is dropped; a crash loses the buffer.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import orjson
import structlog
from pydantic import BaseModel

from hostd.errors import HostdError
from hostd.ratelimitedlog import RateLimitedLog

if TYPE_CHECKING:
    from hostd.logsinks import Sink
    from hostd.observability import Metrics
    from hostd.settings import PredictionLogSettings

log = structlog.get_logger("hostd.predictionlog")
BATCH = 500  # records per sink call
LINGER_S = 0.05  # how long a batch may wait to fill
DOWN_S = 5.0  # after a batch failed every try, records are dropped this long before the sink is tried again
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)  # between tries of a failing batch; then it is dropped
CLOSE_S = 5.0  # the most closing the sink may take


@dataclass(slots=True)
class Record:
    """One request as the client saw it."""

    request_id: str
    time: float  # when it arrived (Unix seconds)
    model: str
    version: str | None  # None: refused before a version was chosen
    transport: str
    inputs: Any  # the rows as the client sent them
    outputs: list[dict[str, Any]] | None  # what it was answered with, one per row
    error: HostdError | None
    latency_s: float
    cached: bool | None  # None: the model has no cache
    trace_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "time": datetime.fromtimestamp(self.time, UTC).isoformat(),
            "model": self.model, "version": self.version, "transport": self.transport,
            "inputs": list(self.inputs), "outputs": self.outputs,
            "error": {"code": self.error.code.value, "message": self.error.message} if self.error else None,
            "latency_ms": round(self.latency_s * 1000, 3), "cached": self.cached, "trace_id": self.trace_id,
        }


class Entry(NamedTuple):
    """A record as the sinks take it: encoded when it is added, so the buffer is bounded in bytes."""

    request_id: str
    line: bytes  # the record as one line of JSON, without the newline


ENCODING = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def encode(record: Record) -> bytes:
    """The record as one JSON line. Inputs orjson cannot write (nested deeper than 254 levels, an integer
    wider than 64 bits) are left out and the record says why: a request is never failed by its record."""
    data = record.to_dict()
    try:
        return orjson.dumps(data, default=_jsonable, option=ENCODING)
    except TypeError as exc:
        data["inputs"] = None
        data["inputs_error"] = f"the inputs could not be written as JSON: {exc}"
        return orjson.dumps(data, default=_jsonable, option=ENCODING)


def _jsonable(value: Any) -> Any:
    """What orjson cannot write itself: a validated row (a pydantic model), anything else as text."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return str(value)


class PredictionLog:
    def __init__(self, settings: PredictionLogSettings, sink: Sink, metrics: Metrics) -> None:
        self.settings = settings
        self.sink = sink
        self._buffer: deque[Entry] = deque()
        self._bytes = 0  # of the lines in the buffer
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._finishing = False
        self._down_until = 0.0  # monotonic time until which the sink counts as down
        self._written = metrics.log_records.labels("written")
        self._dropped = metrics.log_records.labels("dropped")
        self._buffered = metrics.log_buffered
        self._warnings = RateLimitedLog(log)

    def sampled(self) -> bool:
        """Whether to record the request at hand (``sample`` of them, at random)."""
        return self.settings.sample >= 1.0 or random.random() < self.settings.sample

    def add(self, record: Record) -> None:
        if self._down_until and time.monotonic() < self._down_until:
            self._dropped.inc()  # the sink just failed for seconds on end: not even buffered (warned then)
            return
        # Encoded here, once (a few µs for a small request, on the order of its parsing for a big one):
        # so the buffer holds at most buffer_bytes, whatever the size of the inputs.
        try:
            line = encode(record)
        except TypeError:  # an output or an id orjson cannot write either: this record only is lost
            self._drop(1, "a record could not be encoded as JSON")
            return
        if len(self._buffer) >= self.settings.buffer or self._bytes + len(line) > self.settings.buffer_bytes:
            self._dropped.inc()
            self._warnings.warning("full", "prediction log buffer is full: records are dropped",
                                   buffer=self.settings.buffer, buffer_bytes=self.settings.buffer_bytes,
                                   sink=self.settings.sink)
            return
        self._buffer.append(Entry(record.request_id, line))
        self._bytes += len(line)
        self._buffered.inc()
        self._wake.set()

    async def run(self) -> None:
        """Hand what is buffered to the sink until ``finish`` (or a cancel: the rest is dropped)."""
        try:
            while not (self._finishing and not self._buffer):
                if not self._buffer:
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                if len(self._buffer) < BATCH and not self._finishing:
                    # Let records gather (as Kafka's linger.ms does): a sink call, a thread hop for the
                    # file sink, per record would cost the loop a fifth of its requests at 4,000/s.
                    await asyncio.sleep(LINGER_S)
                batch = self._take()
                await self._deliver(batch)
        finally:
            self._drop(len(self._buffer), "hostd stopped with records the sink had not taken")
            self._clear()
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_S):
                await self.sink.close()
            self._done.set()

    async def finish(self, grace_s: float) -> None:
        """Stop taking records; return once the sink has the buffered ones, or after ``grace_s``."""
        self._finishing = True
        self._wake.set()
        with anyio.move_on_after(grace_s):
            await self._done.wait()

    def _take(self) -> list[Entry]:
        batch = [self._buffer.popleft() for _ in range(min(BATCH, len(self._buffer)))]
        self._bytes -= sum(len(entry.line) for entry in batch)
        self._buffered.set(len(self._buffer))
        return batch

    def _clear(self) -> None:
        self._buffer.clear()
        self._bytes = 0
        self._buffered.set(0)

    async def _deliver(self, batch: list[Entry]) -> None:
        for pause in (*BACKOFF_S, None):
            try:
                refused = await self.sink.write(batch)
                self._written.inc(len(batch) - refused)
                self._drop(refused, "the sink refused them (too big)")
                return
            except Exception as exc:  # a sink's failure must not end the log
                self._warnings.warning("sink", "prediction log sink failed", sink=self.settings.sink,
                                       error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            if pause is None or self._finishing:
                break
            await asyncio.sleep(pause)
        # Down, then: drop what waits, and what comes for the next DOWN_S, without trying (a dead sink
        # must cost the requests nothing: no buffering, no reconnecting per batch).
        self._down_until = time.monotonic() + DOWN_S
        self._drop(len(batch) + len(self._buffer), f"the sink kept failing; records are dropped for {DOWN_S:g} s")
        self._clear()

    def _drop(self, count: int, why: str) -> None:
        if count:
            self._dropped.inc(count)
            self._warnings.warning(why, "prediction log records dropped", records=count, why=why)
