"""The `beam` batch engine plugin (the pipeline itself is in hostd_beam.pipeline, imported only when
the engine runs: Beam takes half a second to import)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hostd.hookspecs import RegisterBatchEngine, hookimpl
from hostd.offline import BatchEngine, BatchJob


def run(job: BatchJob) -> Iterator[dict[str, Any]]:
    try:
        from hostd_beam import pipeline
    except ImportError as exc:
        raise SystemExit(f"the beam engine needs Apache Beam: pip install 'hostd[beam]' ({exc})") from None
    return pipeline.run(job)


@hookimpl
def register_batch_engines(register: RegisterBatchEngine) -> None:
    register(BatchEngine("beam", run, "an Apache Beam pipeline (DirectRunner; Beam options after --)"))
