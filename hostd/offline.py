"""`hostd batch`: score a file offline with one model, on a pluggable engine (local, beam, mapreduce).

The pieces every engine shares live here: ``Scorer`` (the model, loaded in-process from the same
config as the daemon, scoring a list of records through ``predict_batch``), ``BatchJob`` (what to
run), and ``run_job`` (reads nothing itself: it takes the engine's results, in whatever order they
come, and writes predictions to the output and failures to the errors file, counting both).
An engine is registered by a plugin (``register_batch_engines``) and yields one result per input
record: ``{"row", "id", "prediction"}`` or ``{"row", "id", "error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostd import kernel, recordfiles
from hostd.errors import HostdError, ModelNotFound
from hostd.registry import Registry, ServedModel
from hostd.settings import load_settings


@dataclass(frozen=True)
class BatchJob:
    config: Path
    model: str
    version: str | None
    input: Path
    output: Path
    errors: Path
    input_format: str
    output_format: str
    workers: int = 1
    chunk_size: int = 1024
    engine_args: tuple[str, ...] = ()  # everything after `--`: Beam pipeline options, mrjob switches


@dataclass(frozen=True)
class BatchEngine:
    name: str
    run: Callable[[BatchJob], Iterable[dict[str, Any]]]  # one result per input record
    description: str = ""


@dataclass
class Summary:
    engine: str
    rows_in: int = 0
    predicted: int = 0
    failed: int = 0
    seconds: float = 0.0

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
        """One result per record, in order: every readable record validated at once, the valid ones
        through the execution kernel (one predict_batch call; a bad row fails alone)."""
        served = self.served
        readable = [item for item in records if "error" not in item]
        checked = iter(kernel.validate_rows(served.name, served.model.input_schema,
                                            [item["data"] for item in readable]) if readable else [])
        results: list[dict[str, Any]] = []
        pending: list[tuple[int, list[Any]]] = []  # result slot, unit
        for item in records:
            data = item if "error" in item else next(checked)
            if isinstance(data, HostdError):
                data = recordfiles.failure(item["row"], data, item["id"])
            elif "error" not in item:
                pending.append((len(results), [data]))
            results.append(data)
        if pending:
            # The kernel is async (it serves the daemon too): a loop per chunk costs ~0.1 ms.
            outcomes = asyncio.run(kernel.execute(served.run_here, [unit for _, unit in pending], model=served.name))
            for (slot, _), outcome in zip(pending, outcomes, strict=True):
                results[slot] = self._result(records[slot], outcome)
        return results

    def _result(self, record: dict[str, Any], outcome: kernel.Outcome) -> dict[str, Any]:
        try:
            if isinstance(outcome, HostdError):
                raise outcome
            prediction = kernel.dump_output(self.served.name, self.served.model.output_schema, outcome[0])
        except HostdError as exc:
            return recordfiles.failure(record["row"], exc, record["id"])
        return {"row": record["row"], "id": record["id"], "prediction": prediction}


def chunks(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in records:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_job(job: BatchJob, engine: BatchEngine, columns: list[str], progress: bool | None = None) -> Summary:
    """Run ``engine`` on ``job``; predictions go to job.output, failures to job.errors."""
    summary = Summary(engine.name)
    started = time.perf_counter()
    output = recordfiles.open_writer(job.output, job.output_format, columns)
    errors = recordfiles.open_writer(job.errors, job.output_format, recordfiles.ERROR_COLUMNS)
    report = Progress(sys.stderr.isatty() if progress is None else progress)
    try:
        for result in engine.run(job):
            summary.rows_in += 1
            key = result["id"] if result["id"] is not None else result["row"]
            if "error" in result:
                summary.failed += 1
                errors.write({"row": result["row"], "id": result["id"], **result["error"]})
            else:
                summary.predicted += 1
                prediction = result["prediction"]
                output.write({"id": key, "prediction": prediction} if job.output_format == "jsonl"
                             else {"id": key, **prediction})
            report.update(summary.rows_in)
    finally:
        output.close()
        errors.close()
        report.close()
    summary.seconds = time.perf_counter() - started
    return summary


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
