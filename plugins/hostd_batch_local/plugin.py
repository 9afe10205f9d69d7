"""The `local` batch engine: stream the input in chunks through predict_batch, in this process or
in ``--workers N`` processes (each loads the model once). Results come out in input order, and at
most ``2 x workers`` chunks are in flight, so memory stays bounded whatever the file's size."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator
from typing import Any

from hostd import recordfiles
from hostd.hookspecs import RegisterBatchEngine, hookimpl
from hostd.offline import BatchEngine, BatchJob, Scorer, chunks

_scorer: Scorer | None = None  # in a worker process


def run(job: BatchJob) -> Iterator[dict[str, Any]]:
    records = recordfiles.read_records(job.input, job.input_format)
    if job.workers <= 1:
        scorer = Scorer.load(job.config, job.model, job.version)
        for chunk in chunks(records, job.chunk_size):
            yield from scorer.score(chunk)
        return
    # spawn, not fork: a forked child would inherit whatever threads the parent has running.
    context = multiprocessing.get_context("spawn")
    with context.Pool(job.workers, initializer=_load, initargs=(str(job.config), job.model, job.version)) as pool:
        in_flight: deque[Any] = deque()
        for chunk in chunks(records, job.chunk_size):
            in_flight.append(pool.apply_async(_score, (chunk,)))
            if len(in_flight) >= 2 * job.workers:
                yield from in_flight.popleft().get()
        while in_flight:
            yield from in_flight.popleft().get()


def _load(config: str, model: str, version: str | None) -> None:
    global _scorer
    _scorer = Scorer.load(config, model, version)


def _score(chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert _scorer is not None
    return _scorer.score(chunk)


@hookimpl
def register_batch_engines(register: RegisterBatchEngine) -> None:
    register(BatchEngine("local", run, "chunks through predict_batch in this process or --workers N processes"))
