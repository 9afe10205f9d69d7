"""The `ray` batch engine plugin (the job itself is in hostd_ray.job, imported only when the engine runs)."""

from __future__ import annotations

from hostd.hookspecs import RegisterBatchEngine, hookimpl
from hostd.offline import BatchEngine, BatchJob, Committed
from hostd.partitions import DISTRIBUTED_FORMATS


def write(job: BatchJob) -> Committed:
    try:
        from hostd_ray import job as ray_job
    except ImportError as exc:
        raise SystemExit(f"the ray engine needs Ray Data: pip install 'hostd[ray]' ({exc})") from None
    return ray_job.write(job)


@hookimpl
def register_batch_engines(register: RegisterBatchEngine) -> None:
    register(BatchEngine("ray", None, "Ray Data (a local Ray; --address after --)", write=write,
                         output_formats=DISTRIBUTED_FORMATS))
