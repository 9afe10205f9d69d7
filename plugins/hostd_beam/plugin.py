"""The `beam` batch engine plugin (the pipeline itself is in hostd_beam.pipeline, imported only when
the engine runs: Beam takes half a second to import)."""

from __future__ import annotations

from hostd.hookspecs import RegisterBatchEngine, hookimpl
from hostd.offline import BatchEngine, deferred_write
from hostd.partitions import DISTRIBUTED_FORMATS


@hookimpl
def register_batch_engines(register: RegisterBatchEngine) -> None:
    register(BatchEngine("beam", None, "an Apache Beam pipeline (DirectRunner; Beam options after --)",
                         write=deferred_write("beam", "hostd_beam.pipeline", "Apache Beam: pip install 'hostd[beam]'"),
                         output_formats=DISTRIBUTED_FORMATS))
