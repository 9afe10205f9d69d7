"""hostd.predictionlog and hostd.logsinks: a record per request, off the request's path, bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from hostd import predictionlog
from hostd.capture import Capture
from hostd.dataplane import DataPlane
from hostd.errors import HostdError
from hostd.logsinks import FileSink
from hostd.observability import Metrics
from hostd.predictionlog import Entry, PredictionLog, Record, encode
from hostd.registry import Registry
from hostd.settings import HostSettings, PredictionLogSettings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ListSink:
    """Keeps what it is given; fails while ``failing``; waits for ``gate`` (if set) before taking a batch."""

    def __init__(self) -> None:
        self.records: list[Entry] = []
        self.failing = False
        self.gate: asyncio.Event | None = None
        self.closed = False

    async def write(self, entries: Sequence[Entry]) -> int:
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise ConnectionError("sink down")
        self.records += entries
        return 0

    async def close(self) -> None:
        self.closed = True


def record(request_id: str = "r1", **changes: Any) -> Record:
    fields: dict[str, Any] = dict(request_id=request_id, time=0.0, model="echo", version="1.0.0", transport="http",
                                  inputs=[{"x": 1}], outputs=[{"y": 2.0}], error=None, latency_s=0.001, cached=None)
    return Record(**{**fields, **changes})


def entry(request_id: str = "r1", **changes: Any) -> Entry:
    return Entry(request_id, encode(record(request_id, **changes)))


def dropped(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("hostd_prediction_log_records_total", {"outcome": "dropped"})


async def logged_plane(sink: Any, sample: float = 1.0) -> tuple[DataPlane, PredictionLog]:
    metrics = Metrics()
    log = PredictionLog(PredictionLogSettings(sink="file", sample=sample), sink, metrics)
    registry = Registry.from_settings(HostSettings.model_validate(
        {"models": [{"class_path": "tests.support.toy:EchoModel"}]}))
    plane = DataPlane(registry, metrics, capture=Capture(registry, log))
    plane.set_ready()
    return plane, log


async def test_every_request_is_recorded_errors_included() -> None:
    sink = ListSink()
    plane, log = await logged_plane(sink)
    async with anyio.create_task_group() as tg:
        tg.start_soon(log.run)
        await plane.predict("echo", {"x": 2}, transport="http", request_id="ok")
        for request_id, model, data in (("invalid", "echo", {"x": "two"}), ("missing", "nope", {"x": 1}),
                                        ("raised", "echo", {"x": 1, "fail": True})):
            with pytest.raises(HostdError):
                await plane.predict(model, data, transport="ws", request_id=request_id)
        await log.finish(5)
        tg.cancel_scope.cancel()
    by_id = {item.request_id: orjson.loads(item.line) for item in sink.records}
    assert set(by_id) == {"ok", "invalid", "missing", "raised"}
    assert by_id["ok"]["outputs"] == [{"y": 4.0, "text": ""}] and by_id["ok"]["inputs"] == [{"x": 2}]
    assert (by_id["ok"]["model"], by_id["ok"]["version"], by_id["ok"]["transport"]) == ("echo", "1.0.0", "http")
    assert {key: by_id[key]["error"]["code"] for key in ("invalid", "missing", "raised")} == {
        "invalid": "INVALID_INPUT", "missing": "MODEL_NOT_FOUND", "raised": "MODEL_ERROR"}
    assert by_id["missing"]["version"] is None
    assert sink.closed


async def test_a_full_buffer_drops_new_records_and_counts_them() -> None:
    metrics = Metrics()
    log = PredictionLog(PredictionLogSettings(sink="file", buffer=3), ListSink(), metrics)
    for index in range(5):
        log.add(record(f"r{index}"))  # nothing takes them: run() is not running
    assert dropped(metrics) == 2


async def test_the_buffer_is_bounded_in_bytes_whatever_the_size_of_the_inputs() -> None:
    metrics = Metrics()
    log = PredictionLog(PredictionLogSettings(sink="file", buffer_bytes=1 << 20), ListSink(), metrics)
    big = [{"text": "x" * 100_000}]  # a 100 kB input: ten fit in the buffer's megabyte
    for index in range(50):
        log.add(record(f"r{index}", inputs=big))
    assert dropped(metrics) == 40
    assert metrics.registry.get_sample_value("hostd_prediction_log_buffered") == 10


async def test_a_failing_sink_is_retried_then_records_are_dropped_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predictionlog, "BACKOFF_S", (0.001, 0.001))
    monkeypatch.setattr(predictionlog, "DOWN_S", 0.2)
    sink, metrics = ListSink(), Metrics()
    log = PredictionLog(PredictionLogSettings(sink="file"), sink, metrics)
    sink.failing = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(log.run)
        log.add(record("lost"))
        with anyio.fail_after(5):
            while not dropped(metrics):
                await anyio.sleep(0.001)
        sink.failing = False  # back up, but the log leaves it alone for DOWN_S: this one is dropped too
        log.add(record("while down"))
        assert dropped(metrics) == 2
        with anyio.fail_after(5):
            while time.monotonic() < log._down_until:  # the DOWN_S window, as the log counts it
                await anyio.sleep(0.01)
        log.add(record("kept"))
        await log.finish(5)
        tg.cancel_scope.cancel()
    assert [item.request_id for item in sink.records] == ["kept"]
    assert dropped(metrics) == 2


async def test_a_slow_sink_does_not_slow_requests() -> None:
    sink = ListSink()
    sink.gate = asyncio.Event()  # the sink takes nothing until the end
    plane, log = await logged_plane(sink)
    async with anyio.create_task_group() as tg:
        tg.start_soon(log.run)
        with anyio.fail_after(5):
            for index in range(200):
                await plane.predict("echo", {"x": index}, request_id=f"r{index}")
        sink.gate.set()
        await log.finish(5)
        tg.cancel_scope.cancel()
    assert len(sink.records) == 200


async def test_sample_records_that_share_of_requests() -> None:
    sink = ListSink()
    plane, log = await logged_plane(sink, sample=0.25)
    async with anyio.create_task_group() as tg:
        tg.start_soon(log.run)
        for index in range(2000):
            await plane.predict("echo", {"x": 1}, request_id=f"r{index}")
        await log.finish(5)
        tg.cancel_scope.cancel()
    assert 350 < len(sink.records) < 650  # 500 expected; 6 standard deviations either side


# --- the file sink ----------------------------------------------------------------------------------


async def test_the_file_sink_writes_jsonl_and_rotates_by_size(tmp_path: Path) -> None:
    sink = FileSink(PredictionLogSettings(sink="file", path="log", rotate_bytes=1024), tmp_path)
    for start in range(0, 40, 10):
        await sink.write([entry(f"r{index}") for index in range(start, start + 10)])
    await sink.close()
    files = sorted((tmp_path / "log").glob("predictions-*.jsonl"))
    assert len(files) == 4  # each batch of 10 records fills a file past 1 KiB
    ids = [orjson.loads(line)["request_id"] for path in files for line in path.read_bytes().splitlines()]
    assert sorted(ids) == sorted(f"r{index}" for index in range(40))
    assert (await sink.find("r17"))["request_id"] == "r17"  # type: ignore[index]
    assert await sink.find("r999") is None


async def test_the_file_sink_keeps_the_newest_max_files(tmp_path: Path) -> None:
    sink = FileSink(PredictionLogSettings(sink="file", path="log", rotate_bytes=1024, max_files=2), tmp_path)
    for start in range(0, 50, 10):
        await sink.write([entry(f"r{index}") for index in range(start, start + 10)])
    await sink.close()
    files = sorted((tmp_path / "log").glob("predictions-*.jsonl"))
    ids = {orjson.loads(line)["request_id"] for path in files for line in path.read_bytes().splitlines()}
    assert (len(files), ids) == (2, {f"r{index}" for index in range(30, 50)})  # the last two files' records


async def test_the_file_sink_writes_parquet_complete_only_when_closed(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="Parquet needs pyarrow (hostd[parquet])")
    sink = FileSink(PredictionLogSettings(sink="file", path="log", format="parquet"), tmp_path)
    await sink.write([entry("a"), entry("b", outputs=None, error=HostdError("boom"))])
    assert [path.name.endswith(".parquet.part") for path in (tmp_path / "log").iterdir()] == [True]
    await sink.close()
    (path,) = (tmp_path / "log").glob("*.parquet")
    table = pq.read_table(path).to_pylist()
    assert [row["request_id"] for row in table] == ["a", "b"]
    assert orjson.loads(table[0]["outputs"]) == [{"y": 2.0}]
    assert orjson.loads(table[1]["error"])["code"] == "MODEL_ERROR"


async def test_inputs_json_cannot_write_leave_the_record_saying_why() -> None:
    deep: Any = []
    for _ in range(300):  # orjson reads 1,024 levels, writes 254
        deep = [deep]
    line = orjson.loads(encode(record("deep", inputs=[{"x": 1, "note": deep}])))
    assert (line["request_id"], line["inputs"], line["outputs"]) == ("deep", None, [{"y": 2.0}])
    assert "could not be written as JSON" in line["inputs_error"]
    wide = orjson.loads(encode(record("wide", inputs=[{"x": 2**70}, {1: "an int key"}])))
    assert wide["inputs"] is None and wide["inputs_error"]


async def test_a_late_label_lookup_skips_a_line_cut_short_and_is_not_repeated_in_vain(tmp_path: Path) -> None:
    sink = FileSink(PredictionLogSettings(sink="file", path="log"), tmp_path)
    await sink.write([entry("whole"), entry("cut")])
    await sink.close()
    (path,) = (tmp_path / "log").glob("*.jsonl")
    path.write_bytes(path.read_bytes()[:-20])  # the last record's line cut short, as by a full disk
    assert (await sink.find("whole"))["request_id"] == "whole"  # type: ignore[index]
    assert await sink.find("cut") is None
    assert "cut" in sink._not_found  # looked for in vain: not read for again
    async with sink._finding:  # while one lookup runs, another answers at once
        assert await sink.find("whole") is None
