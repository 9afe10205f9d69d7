"""The `ray` batch engine plugin (the job itself is in hostd_ray.job, imported only when the engine runs)."""

from __future__ import annotations

from hostd.hookspecs import RegisterBatchEngine, hookimpl
from hostd.offline import BatchEngine, deferred_write
from hostd.partitions import DISTRIBUTED_FORMATS


@hookimpl
def register_batch_engines(register: RegisterBatchEngine) -> None:
    register(BatchEngine("ray", None, "Ray Data (a local Ray; --address after --)",
                         write=deferred_write("ray", "hostd_ray.job", "Ray Data: pip install 'hostd[ray]'"),
                         output_formats=DISTRIBUTED_FORMATS))
