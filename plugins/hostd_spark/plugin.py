"""The `spark` batch engine plugin (the job itself is in hostd_spark.job, imported only when the engine
runs: pyspark starts a JVM)."""

from __future__ import annotations

from hostd.hookspecs import RegisterBatchEngine, hookimpl
from hostd.offline import BatchEngine, BatchJob, Committed
from hostd.partitions import DISTRIBUTED_FORMATS


def write(job: BatchJob) -> Committed:
    try:
        from hostd_spark import job as spark_job
    except ImportError as exc:
        raise SystemExit(f"the spark engine needs pyspark and Java 17: pip install 'hostd[spark]' ({exc})") from None
    return spark_job.write(job)


@hookimpl
def register_batch_engines(register: RegisterBatchEngine) -> None:
    register(BatchEngine("spark", None, "Apache Spark (local[*]; --master and --conf after --)", write=write,
                         output_formats=DISTRIBUTED_FORMATS))
