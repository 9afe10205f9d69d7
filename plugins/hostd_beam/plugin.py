"""The `beam` batch engine plugin (the pipeline itself is in hostd_beam.pipeline, imported only when
the engine runs: Beam takes half a second to import)."""

from __future__ import annotations

from hostd.hookspecs import RegisterBatchEngine, hookimpl
from hostd.offline import BatchEngine, BatchJob, Committed
from hostd.partitions import DISTRIBUTED_FORMATS


def write(job: BatchJob) -> Committed:
    try:
        from hostd_beam import pipeline
    except ImportError as exc:
        raise SystemExit(f"the beam engine needs Apache Beam: pip install 'hostd[beam]' ({exc})") from None
    return pipeline.write(job)


@hookimpl
def register_batch_engines(register: RegisterBatchEngine) -> None:
    register(BatchEngine("beam", None, "an Apache Beam pipeline (DirectRunner; Beam options after --)", write=write,
                         output_formats=DISTRIBUTED_FORMATS))
