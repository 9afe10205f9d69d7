"""The `spark` batch engine plugin (the job itself is in hostd_spark.job, imported only when the engine
runs: pyspark starts a JVM)."""

from __future__ import annotations

from hostd.hookspecs import RegisterBatchEngine, hookimpl
from hostd.offline import BatchEngine, deferred_write
from hostd.partitions import DISTRIBUTED_FORMATS


@hookimpl
def register_batch_engines(register: RegisterBatchEngine) -> None:
    register(BatchEngine("spark", None, "Apache Spark (local[*]; --master and --conf after --)",
                         write=deferred_write("spark", "hostd_spark.job",
                                              "pyspark and Java 17: pip install 'hostd[spark]'"),
                         output_formats=DISTRIBUTED_FORMATS))
