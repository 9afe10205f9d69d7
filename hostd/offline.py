"""`hostd batch`: score a file offline with one model, on a pluggable engine (local, beam, mapreduce).

The pieces every engine shares live here: ``Scorer`` (the model, loaded in-process from the same
config as the daemon, scoring a list of records through ``predict_batch``), ``BatchJob`` (what to
run), and ``run_job`` (reads nothing itself: it takes the engine's results, in whatever order they
come, and writes predictions to the output and failures to the errors file, counting both).
An engine is registered by a plugin (``register_batch_engines``) and yields one result per input
record: ``{"row", "id", "prediction"}`` or ``{"row", "id", "error": {"code", "message"}}`` (and may
also yield them a list at a time, ``BatchEngine.run_chunks``).

Scoring a chunk does nothing a row at a time that pydantic-core or numpy can do for the whole
chunk: one validation call, one predict_batch call, one dump of the outputs.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import sys
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hostd import kernel, recordfiles
from hostd.configfile import load_settings
from hostd.errors import HostdError, ModelNotFound
from hostd.registry import Registry, ServedModel

T = TypeVar("T")


@dataclass(frozen=True)
class BatchJob:
    config: Path
    model: str
    version: str | None
    # Paths for the local engine; for an engine that writes its own output (``BatchEngine.write``),
    # also URLs its filesystem layer reads and writes (s3://, gs://, hdfs://).
    input: str
    output: str
    errors: str
    input_format: str
    output_format: str
    workers: int = 1
    chunk_size: int = 1024
    engine_args: tuple[str, ...] = ()  # everything after `--`: Beam pipeline options, mrjob switches
    progress: bool = False  # an engine's own progress bars (Spark's, Ray Data's): --progress, or a terminal


@dataclass(frozen=True)
class BatchEngine:
    name: str
    run: Callable[[BatchJob], Iterable[dict[str, Any]]] | None  # one result per input record
    description: str = ""
    #: The same results a list at a time, for an engine that makes them so (the local engine): run_job
    #: then takes each list as it is, not a result at a time from ``run`` (a generator step per row
    #: was ~5% of the local engine's run).
    run_chunks: Callable[[BatchJob], Iterable[list[dict[str, Any]]]] | None = None
    #: Instead of ``run``: the engine's workers write the output and the errors themselves, straight
    #: to where they go (a cluster's workers cannot reach the driver's disk), and commit (hostd.partitions).
    write: Callable[[BatchJob], Committed] | None = None
    #: What it writes: every format, or (an engine that writes its own output) what its writers can.
    output_formats: tuple[str, ...] = recordfiles.FORMATS


@dataclass(frozen=True)
class Committed:
    """What an engine that writes its own output reports: the counts it kept (its metrics, counters
    or an aggregation, never the files read back), and the marker it wrote last."""

    rows_in: int
    failed: int
    marker: str
    errors: str  # where the failed rows are


def deferred_write(engine: str, module: str, needs: str) -> Callable[[BatchJob], Committed]:
    """An engine's ``write`` that imports ``module`` (and calls its ``write``) only when the engine runs:
    Beam takes half a second to import, pyspark and Ray more. Without it installed, the user is told
    what to install (``needs``: 'pyspark and Java 17: pip install hostd[spark]')."""

    def write(job: BatchJob) -> Committed:
        try:
            imported = importlib.import_module(module)
        except ImportError as exc:
            raise SystemExit(f"the {engine} engine needs {needs} ({exc})") from None
        return imported.write(job)  # type: ignore[no-any-return]

    return write


@dataclass
class Summary:
    engine: str
    rows_in: int = 0
    predicted: int = 0
    failed: int = 0
    seconds: float = 0.0
    committed: str | None = None  # the _SUCCESS marker of an engine that writes its own output
    errors: str | None = None  # where that engine put the failed rows

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (f"{self.rows_in:,} rows in, {self.predicted:,} predicted, {self.failed:,} failed, "
                f"{self.rows_per_s:,.0f} rows/s ({self.seconds:.2f} s, engine {self.engine})")


class Scorer:
    """One model, loaded in this process, scoring records in batches (what every engine calls)."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def load(cls, config: Path | str, model: str, version: str | None = None) -> Scorer:
        """Build the configured versions of ``model`` (only those) and take ``version``, or the
        latest; ModelNotFound lists what the config has."""
        settings = load_settings(config)
        found = Registry.from_settings(settings, only=model)
        if model in found.names() and (version is None or version in [s.version for s in found]):
            # As the daemon does: what is loaded now lives as long as the run, and a full collection
            # walking it (~75 ms) would otherwise come round again and again while rows are scored.
            gc.collect()
            gc.freeze()
            return cls(found.get(model, version))
        wanted = f"model '{model}'" + (f" version '{version}'" if version else "")
        has = [f"{served.name} {served.version}" for served in found] + found.passed_over
        raise ModelNotFound(f"{wanted} is not in {config} (it has: {', '.join(has) or 'no models'})")

    def output_columns(self) -> list[str]:
        return ["id", *self.served.model.output_schema.model_fields]

    def score(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result per record, in order: the readable records validated in one call, the valid
        ones through the execution kernel (one predict_batch call; a bad row fails alone) and their
        outputs dumped in one call. Per row there are only list comprehensions."""
        served = self.served
        results = list(records)  # an unreadable record is its own result
        slots = [index for index, item in enumerate(records) if "error" not in item]
        rows = kernel.validate_rows(served.name, served.model.input_schema,
                                    [records[slot]["data"] for slot in slots]) if slots else []
        slots, rows = _set_aside(records, slots, rows, results)
        if not slots:
            return results
        outputs = self._run(kernel.execute_rows(served.run_here, rows, model=served.name))
        slots, outputs = _set_aside(records, slots, outputs, results)
        dumped = kernel.dump_outputs(served.name, served.model.output_schema, outputs)
        slots, dumped = _set_aside(records, slots, dumped, results)
        if len(slots) == len(records):  # every row predicted: nothing else to keep
            return [{"row": item["row"], "id": item["id"], "prediction": prediction}
                    for item, prediction in zip(records, dumped, strict=True)]
        predicted = [{"row": records[slot]["row"], "id": records[slot]["id"], "prediction": prediction}
                     for slot, prediction in zip(slots, dumped, strict=True)]
        for slot, result in zip(slots, predicted, strict=True):
            results[slot] = result
        return results

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        # The kernel is async (it serves the daemon too). One loop for the scorer's life: asyncio.run
        # made a loop, its self-pipe and a SIGINT handler per chunk, ~6% of a run's time.
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            weakref.finalize(self, self._loop.close)
        return self._loop.run_until_complete(work)


def _set_aside(records: list[dict[str, Any]], slots: list[int], items: list[Any],
               results: list[dict[str, Any]]) -> tuple[list[int], list[Any]]:
    """Each item that is an error becomes its record's result; the others go on, with their slots."""
    if not any(isinstance(item, HostdError) for item in items):
        return slots, items
    for slot, item in zip(slots, items, strict=True):
        if isinstance(item, HostdError):
            results[slot] = _failed(records[slot], item)
    kept = [(slot, item) for slot, item in zip(slots, items, strict=True) if not isinstance(item, HostdError)]
    return [slot for slot, _ in kept], [item for _, item in kept]


def _failed(item: dict[str, Any], error: HostdError) -> dict[str, Any]:
    return recordfiles.failure(item["row"], error, item["id"])


def run_job(job: BatchJob, engine: BatchEngine, columns: list[str], progress: bool | None = None) -> Summary:
    """Run ``engine`` on ``job``; predictions go to job.output, failures to job.errors."""
    summary = Summary(engine.name)
    started = time.perf_counter()
    if engine.write is not None:
        committed = engine.write(job)
        summary.rows_in, summary.failed, summary.committed = committed.rows_in, committed.failed, committed.marker
        summary.errors = committed.errors
        summary.predicted = summary.rows_in - summary.failed
        summary.seconds = time.perf_counter() - started
        return summary
    output = recordfiles.open_writer(Path(job.output), job.output_format, columns)
    errors = recordfiles.open_writer(Path(job.errors), job.output_format, recordfiles.ERROR_COLUMNS)
    report = Progress(sys.stderr.isatty() if progress is None else progress)
    nested = job.output_format == "jsonl"  # {"id", "prediction": {...}}; tables have a column per field
    thresholds = collect_less()
    try:
        # Written a chunk at a time: one write and one progress update per chunk, not per row.
        for results in _result_chunks(job, engine):
            failed = [{"row": r["row"], "id": r["id"], **r["error"]} for r in results if "error" in r]
            output.write_many(_output_rows([r for r in results if "error" not in r] if failed else results, nested))
            errors.write_many(failed)
            summary.rows_in += len(results)
            summary.failed += len(failed)
            report.update(summary.rows_in)
    finally:
        output.close()
        errors.close()
        report.close()
        gc.set_threshold(*thresholds)
    summary.predicted = summary.rows_in - summary.failed
    summary.seconds = time.perf_counter() - started
    return summary


def collect_less() -> tuple[int, int, int]:
    """Run the cyclic garbage collector less often while scoring; returns the thresholds it replaced.

    Each row makes a few short-lived containers (record, model input and output, result) that
    reference counting frees. At Python's default, a young collection every 700 new containers,
    the chunk in hand was promoted and the older generations re-walked again and again: 2,500
    collections per 200,000 rows, ~10% of a run's time. At 10,000 (counted net of what is freed)
    they all but stop, and garbage in cycles still starts one."""
    before = gc.get_threshold()
    gc.set_threshold(10_000, *before[1:])
    return before


def _result_chunks(job: BatchJob, engine: BatchEngine) -> Iterable[list[dict[str, Any]]]:
    if engine.run_chunks is not None:
        return engine.run_chunks(job)
    assert engine.run is not None, f"the {engine.name} engine neither runs nor writes"
    return recordfiles.chunks(engine.run(job), job.chunk_size)


def _output_rows(predicted: list[dict[str, Any]], nested: bool) -> list[dict[str, Any]]:
    # The id column holds the record's id, or its row number when it has none.
    if nested:
        return [{"id": r["id"] if r["id"] is not None else r["row"], "prediction": r["prediction"]} for r in predicted]
    return [{"id": r["id"] if r["id"] is not None else r["row"], **r["prediction"]} for r in predicted]


@dataclass
class Progress:
    """A tqdm bar on a terminal (when tqdm is installed), a plain line every 5 s otherwise."""

    bar: bool
    _tqdm: Any = None
    _last: float = field(default_factory=time.monotonic)
    _count: int = 0

    def __post_init__(self) -> None:
        if self.bar:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._tqdm = tqdm(unit=" rows", unit_scale=True, file=sys.stderr)

    def update(self, count: int) -> None:
        if self._tqdm is not None:
            self._tqdm.update(count - self._count)
        elif time.monotonic() - self._last >= 5:
            print(f"hostd batch: {count:,} rows", file=sys.stderr, flush=True)
            self._last = time.monotonic()
        self._count = count

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
