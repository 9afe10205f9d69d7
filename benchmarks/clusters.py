"""Clusters on 127.0.0.1 for the batch engines: a Spark standalone cluster (a master and workers, from
the pyspark distribution's own launcher) and a Ray cluster (``ray start --head``). The engine benchmark
scores on them, and tests/batch/test_clusters.py checks the engines against them.

Each is a context manager that yields what a user would pass to ``hostd batch -- ...`` and stops only
the processes it started, by PID, when it leaves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import free_port

READY_S = 90.0  # a JVM or a Ray head on a busy 2-core machine


@dataclass
class SparkCluster:
    master: str  # spark://127.0.0.1:PORT
    ui: str  # the master's web UI: /json/ lists workers and applications
    pids: list[int] = field(default_factory=list)

    def status(self) -> dict[str, object]:
        with urllib.request.urlopen(f"{self.ui}/json/", timeout=5) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]


@contextmanager
def spark_standalone(workdir: Path, workers: int = 2, cores: int = 1, memory: str = "1g") -> Iterator[SparkCluster]:
    """A master and ``workers`` workers of ``cores`` cores each, started with ``bin/spark-class``
    (the pip wheel has no sbin/start-master.sh), ready when every worker has registered."""
    import pyspark

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**_environ(), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    port, ui = free_port(), free_port()
    cluster = SparkCluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}")
    with ExitStack() as running:
        master = running.enter_context(_process(
            [str(spark_class), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(ui)], env, workdir / "spark-master.log"))
        cluster.pids.append(master)
        for number in range(workers):
            work = workdir / f"spark-worker-{number}"
            work.mkdir(parents=True, exist_ok=True)
            cluster.pids.append(running.enter_context(_process(
                [str(spark_class), "org.apache.spark.deploy.worker.Worker", cluster.master, "--host", "127.0.0.1",
                 "--cores", str(cores), "--memory", memory, "--webui-port", str(free_port()), "--work-dir", str(work)],
                env, workdir / f"spark-worker-{number}.log")))
        _wait(lambda: _alive_workers(cluster) == workers, f"{workers} Spark workers to register with {cluster.master}")
        yield cluster


def _alive_workers(cluster: SparkCluster) -> int:
    try:
        return int(cluster.status().get("aliveworkers", 0))  # type: ignore[call-overload]
    except OSError:
        return 0


@dataclass
class RayCluster:
    address: str  # 127.0.0.1:PORT, for `hostd batch --engine ray -- --address ...`
    env: dict[str, str]  # what a process attaching to it needs (its own HOME: Ray 2.60 keeps a token there)


@contextmanager
def ray_head(workdir: Path, cpus: int = 2) -> Iterator[RayCluster]:
    """``ray start --head`` on 127.0.0.1, stopped with ``ray stop`` under the same HOME (which only
    this cluster uses), then its processes waited for."""
    home = workdir / "ray-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {**_environ(), "HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    ray = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--num-cpus", str(cpus), "--include-dashboard", "false", "--disable-usage-stats",
                    "--temp-dir", str(workdir / "ray-tmp")],
                   env=env, check=True, capture_output=True, timeout=READY_S)
    try:
        yield RayCluster(f"127.0.0.1:{port}", env)
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=60)


def _environ() -> dict[str, str]:
    """Ours, less HOSTD_* settings: the cluster's workers run hostd, which would read them as its own."""
    return {name: value for name, value in os.environ.items() if not name.startswith("HOSTD_")}


@contextmanager
def _process(command: list[str], env: dict[str, str], log: Path) -> Iterator[int]:
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process.pid
    finally:
        # spark-class execs java in the same process group: the group is this process and what it started.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _wait(ready: object, what: str) -> None:
    deadline = time.monotonic() + READY_S
    while not ready():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {READY_S:.0f} s for {what}")
        time.sleep(0.25)
