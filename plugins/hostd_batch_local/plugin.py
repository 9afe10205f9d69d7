"""The `local` batch engine: stream the input in chunks through predict_batch, in this process or
in ``--workers N`` processes (each loads the model once). Results come out in input order, a chunk
at a time, and at most ``2 x workers`` chunks are in flight, so memory stays bounded whatever the
file's size."""

from __future__ import annotations

import itertools
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hostd import recordfiles
from hostd.hookspecs import RegisterBatchEngine, hookimpl
from hostd.offline import BatchEngine, BatchJob, Scorer, collect_less

_scorer: Scorer | None = None  # in a worker process


def run_chunks(job: BatchJob) -> Iterator[list[dict[str, Any]]]:
    return _in_workers(job) if job.workers > 1 else _here(job)


def _here(job: BatchJob) -> Iterator[list[dict[str, Any]]]:
    scorer = Scorer.load(job.config, job.model, job.version)
    for chunk in recordfiles.read_chunks(Path(job.input), job.input_format, job.chunk_size):
        yield scorer.score(chunk)


def _in_workers(job: BatchJob) -> Iterator[list[dict[str, Any]]]:
    # JSONL goes to the workers unparsed: this process, which also writes every result, would
    # otherwise be the one all the workers wait for.
    chunks = recordfiles.read_unparsed(Path(job.input), job.input_format, job.chunk_size)
    # spawn, not fork: a forked child would inherit whatever threads the parent has running.
    context = multiprocessing.get_context("spawn")
    with context.Pool(job.workers, initializer=_load, initargs=(str(job.config), job.model, job.version)) as pool:
        in_flight: deque[Any] = deque()
        for chunk in chunks:
            in_flight.append(pool.apply_async(_score, (chunk,)))
            if len(in_flight) >= 2 * job.workers:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()


def run(job: BatchJob) -> Iterable[dict[str, Any]]:
    return itertools.chain.from_iterable(run_chunks(job))


def _load(config: str, model: str, version: str | None) -> None:
    global _scorer
    _scorer = Scorer.load(config, model, version)
    collect_less()  # for the worker's life: it only scores


def _score(chunk: recordfiles.Lines | list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert _scorer is not None
    return _scorer.score(recordfiles.parsed(chunk))


@hookimpl
def register_batch_engines(register: RegisterBatchEngine) -> None:
    register(BatchEngine("local", run, "chunks through predict_batch in this process or --workers N processes",
                         run_chunks))
