"""Real clusters on 127.0.0.1 for tests/batch/test_clusters.py: a Spark standalone cluster, a Ray
cluster and an S3 endpoint (moto), each a context manager that waits a bounded time until it is
ready and, when it leaves, stops exactly the processes it started: by process group, SIGTERM, then
SIGKILL after a timeout.

Also what reads back what the engines wrote (a directory of part files, or an S3 prefix) and runs
``hostd batch`` with an environment of its own (credentials, a HOME for Ray), killing the whole
process group (the driver's JVM, Ray's workers) if it overruns.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.batch.helpers import CONFIG, HOSTD, ROOT, SUMMARY
from tests.conftest import free_port

BIN = Path(sys.executable).parent
READY_S = 60.0  # a JVM or a Ray head on a busy 2-core machine
STOP_S = 15.0  # SIGTERM to SIGKILL
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def environ(**extra: str) -> dict[str, str]:
    """Ours, less HOSTD_* settings (hostd on a cluster's workers would read them as its own) and
    less any AWS settings of the machine (the tests' S3 is moto's), plus ``extra``."""
    return {**{name: value for name, value in os.environ.items()
               if not name.startswith(("HOSTD_", "AWS_"))}, **extra}


def wait_until(ready: Callable[[], Any], what: str, timeout: float = READY_S,
               alive: Callable[[], str | None] | None = None) -> Any:
    """Poll ``ready`` until it returns something true; fail after ``timeout`` seconds, or as soon as
    ``alive`` says (with a reason) that what we wait for has died."""
    deadline = time.monotonic() + timeout
    while True:
        found = ready()
        if found:
            return found
        if alive is not None and (dead := alive()):
            raise RuntimeError(f"while waiting for {what}: {dead}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.25)


# -- processes ------------------------------------------------------------------------------------

@dataclass
class Process:
    """A process we started in a process group of its own, with its output in ``log``."""

    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def dead(self) -> str | None:
        if self.popen.poll() is None:
            return None
        return f"{self.popen.args!r} exited with {self.popen.returncode}:\n{self.tail()}"

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, others: Sequence[int] = ()) -> None:
        """SIGTERM to the group, SIGKILL to whatever of it (and of ``others``, PIDs recorded while it
        ran) is left after STOP_S."""
        _signal_group(self.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=STOP_S)
        _signal_group(self.pid, signal.SIGKILL)
        for pid in others:
            with suppress(psutil.Error):
                psutil.Process(pid).kill()
        self.popen.wait(timeout=STOP_S)


def _signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, signum)


@contextmanager
def started(command: list[str], env: dict[str, str], log: Path) -> Iterator[Process]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as output:
        popen = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    process = Process(popen, log)
    try:
        yield process
    finally:
        process.stop()


# -- running hostd --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    command: list[str]
    returncode: int
    stderr: str
    seconds: float

    def summary(self) -> tuple[int, int, int, str]:
        """(rows in, predicted, failed, engine) from the summary line on stderr. Spark draws its
        progress bars on stderr with carriage returns, so a line is what a \\r or \\n ends."""
        found = SUMMARY.findall("\n".join(self.stderr.replace("\r", "\n").splitlines()))
        assert len(found) == 1, f"no single summary line in stderr:\n{self.stderr[-5000:]}"
        rows_in, predicted, failed, engine = found[0]
        return int(rows_in.replace(",", "")), int(predicted.replace(",", "")), int(failed.replace(",", "")), engine

    def committed(self) -> str:
        lines = [line for line in self.stderr.replace("\r", "\n").splitlines()
                 if line.startswith("hostd batch: committed ")]
        assert len(lines) == 1, f"no single 'committed' line in stderr:\n{self.stderr[-5000:]}"
        return lines[0].removeprefix("hostd batch: committed ")

    def explain(self) -> str:
        return f"$ {' '.join(self.command)}\nexit {self.returncode} after {self.seconds:.1f} s\n{self.stderr[-6000:]}"


def hostd_batch(model: str, source: str | Path, output: str | Path, *options: str | Path,
                env: dict[str, str] | None = None, timeout: float = 240) -> Run:
    """``hostd batch CONFIG --model MODEL --input SOURCE --output OUTPUT --no-progress [options]``,
    in a process group of its own that is killed whole if it takes longer than ``timeout``."""
    command = [HOSTD, "batch", str(CONFIG), "--model", model, "--input", str(source), "--output", str(output),
               "--no-progress", *map(str, options)]
    began = time.monotonic()
    popen = subprocess.Popen(command, cwd=ROOT, env=env or environ(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _, stderr = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(popen.pid, signal.SIGTERM)
        try:
            _, stderr = popen.communicate(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            _signal_group(popen.pid, signal.SIGKILL)
            _, stderr = popen.communicate(timeout=STOP_S)
        raise TimeoutError(f"{' '.join(command)} took over {timeout:.0f} s:\n"
                           f"{stderr.decode(errors='replace')[-6000:]}") from None
    finally:
        _signal_group(popen.pid, signal.SIGKILL)  # what it left behind: a JVM, a local Ray's processes
    return Run(command, popen.returncode, stderr.decode(errors="replace"), time.monotonic() - began)


# -- reading what an engine wrote -----------------------------------------------------------------

def is_part(name: str) -> bool:
    """A part file of an engine's output directory: not a marker (_SUCCESS) nor hidden (Spark's .crc)."""
    return bool(name) and not name.startswith(("_", "."))


def jsonl_rows(texts: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for text in texts for line in text.splitlines() if line.strip()]


def directory_rows(directory: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL output directory's part files."""
    assert directory.is_dir(), f"{directory} is no directory"
    return jsonl_rows([part.read_text() for part in sorted(directory.iterdir()) if is_part(part.name)])


# -- Spark standalone -----------------------------------------------------------------------------

@dataclass
class SparkCluster:
    master: str  # spark://127.0.0.1:PORT
    ui: str  # the master's web UI; /json/ lists the workers and the applications
    work_dirs: list[Path]  # each worker's --work-dir: an application's executors log under <dir>/<app id>/
    processes: list[Process] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.ui}/json/", timeout=5) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    def alive_workers(self) -> int:
        return int((_status_or_none(self) or {}).get("aliveworkers", 0))

    def dead(self) -> str | None:
        return next(filter(None, (process.dead() for process in self.processes)), None)


@contextmanager
def spark_standalone(folder: Path, workers: int = 2) -> Iterator[SparkCluster]:
    """A master and ``workers`` workers of one core and 1 GB each, started with the pyspark
    distribution's ``bin/spark-class`` (the wheel has no sbin/start-*.sh), ready once every worker
    has registered with the master."""
    import pyspark

    home = Path(pyspark.__file__).parent
    spark_class = str(home / "bin" / "spark-class")
    # Daemons that live a minute: C1 only and one GC thread (a third less CPU to start on 2 cores); no
    # REST submission server (it takes port 6066, which another Spark master may hold).
    env = environ(SPARK_HOME=str(home), SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
                  SPARK_DAEMON_JAVA_OPTS="-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
                  SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false")
    cluster = SparkCluster("", "", [folder / f"worker-{number}" for number in range(workers)])
    with ExitStack() as running:
        master = running.enter_context(started(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(free_port()),
             "--webui-port", str(free_port())], env, folder / "master.log"))
        cluster.processes.append(master)
        # The ports it got, from its log: Spark takes the next one up if the one it was given is taken.
        url, ui = wait_until(lambda: _master_ports(master.tail(100_000)), "the Spark master to listen",
                             alive=cluster.dead)
        cluster.master, cluster.ui = url, f"http://127.0.0.1:{ui}"
        # Workers started before the master listens wait 5 to 15 s to register again.
        wait_until(lambda: _status_or_none(cluster), f"the Spark master's web UI at {cluster.ui}", alive=cluster.dead)
        for number, work_dir in enumerate(cluster.work_dirs):
            work_dir.mkdir(parents=True)
            cluster.processes.append(running.enter_context(started(
                [spark_class, "org.apache.spark.deploy.worker.Worker", cluster.master, "--host", "127.0.0.1",
                 "--cores", "1", "--memory", "1g", "--webui-port", str(free_port()), "--work-dir", str(work_dir)],
                env, folder / f"worker-{number}.log")))
        wait_until(lambda: cluster.alive_workers() == workers,
                   f"{workers} Spark workers to register with {cluster.master}", alive=cluster.dead)
        yield cluster


def _master_ports(log: str) -> tuple[str, str] | None:
    url = re.search(r"Starting Spark master at (spark://\S+)", log)
    ui = re.search(r"Successfully started service 'MasterUI' on port (\d+)", log)
    return (url.group(1), ui.group(1)) if url and ui else None


def _status_or_none(cluster: SparkCluster) -> dict[str, Any] | None:
    try:
        status = cluster.status()
    except (OSError, ValueError):
        return None
    return status if status.get("status") == "ALIVE" else None


# -- Ray ------------------------------------------------------------------------------------------

@dataclass
class RayCluster:
    address: str  # 127.0.0.1:PORT, for `hostd batch --engine ray -- --address ...`
    env: dict[str, str]  # what a driver attaching to it runs with (its HOME: Ray 2.60 keeps a token there)
    temp_dir: Path  # its sessions: logs, and the Ray Data logs of every job that ran on it
    head: Process


@contextmanager
def ray_head(folder: Path, temp_dir: Path, cpus: int = 2,
             env_extra: dict[str, str] | None = None) -> Iterator[RayCluster]:
    """``ray start --head --block`` on 127.0.0.1, every port of its own (not Ray's defaults, which
    another Ray on this machine may hold), its sessions under ``temp_dir`` (short: Ray's sockets
    live there), with ``env_extra`` in the environment of its workers.

    Stopped by PID, never with ``ray stop``: that stops every Ray process on the machine (it finds
    them by name), whatever cluster they belong to. SIGTERM to ``ray start --block`` stops its
    processes (no draining: RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0); whatever of its process group
    and of the processes recorded under it is left after STOP_S is killed."""
    home = folder / "home"
    home.mkdir(parents=True)
    env = environ(HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
                  RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", **(env_extra or {}))
    for attempt in range(3):  # a port we chose may be taken before Ray binds it: then with fresh ones
        port = free_port()
        ports = {name: str(free_port()) for name in (
            "--object-manager-port", "--node-manager-port", "--ray-client-server-port", "--dashboard-port",
            "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
            "--metrics-export-port")}
        command = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                   "--port", str(port), *(item for pair in ports.items() for item in pair),
                   "--min-worker-port", "0", "--max-worker-port", "0", "--num-cpus", str(cpus),
                   "--object-store-memory", str(200 * 2**20), "--include-dashboard", "false",
                   "--disable-usage-stats", "--temp-dir", str(temp_dir)]
        with started(command, env, folder / f"ray-start-{attempt}.log") as head:
            try:
                wait_until(lambda: "Ray runtime started" in head.tail(100_000),
                           f"ray start --head on 127.0.0.1:{port}", alive=head.dead)
            except RuntimeError:  # it died
                if attempt < 2:
                    continue
                raise
            cluster = RayCluster(f"127.0.0.1:{port}", env, temp_dir, head)
            try:
                yield cluster
            finally:
                recorded = [process.pid for process in _descendants(head.pid)]
                head.stop(others=recorded)
                left = [process for process in map(_alive, recorded) if process is not None]
                assert not left, f"Ray processes left after stopping the head: {left}"
            return


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _alive(pid: int) -> psutil.Process | None:
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process
    except psutil.Error:
        return None


# -- S3 (moto) ------------------------------------------------------------------------------------

@dataclass
class S3:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    client: Any  # boto3's, for the bucket

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def keys(self, prefix: str) -> list[str]:
        found: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            found += [item["Key"] for item in page.get("Contents", [])]
        return found

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]

    def parts(self, prefix: str) -> list[str]:
        """The part objects directly under ``prefix`` (a directory an engine wrote): no marker, no
        directory placeholder (pyarrow's create_dir makes "prefix/")."""
        prefix = prefix.rstrip("/") + "/"
        return [key for key in self.keys(prefix) if "/" not in key[len(prefix):] and is_part(key[len(prefix):])]

    def rows(self, prefix: str) -> list[dict[str, Any]]:
        return jsonl_rows([self.get(key).decode() for key in self.parts(prefix)])

    def committed(self, prefix: str) -> bool:
        return f"{prefix.rstrip('/')}/_SUCCESS" in self.keys(prefix.rstrip("/") + "/")


@contextmanager
def moto_s3(folder: Path, bucket: str = "bucket") -> Iterator[S3]:
    """``moto_server`` on 127.0.0.1 with ``bucket`` made, on a fresh port if the first was taken."""
    import boto3

    for attempt in range(3):
        port = free_port()
        with started([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], environ(),
                     folder / f"moto-{attempt}.log") as server:
            endpoint = f"http://127.0.0.1:{port}"
            try:
                wait_until(lambda: _answers(endpoint), f"moto_server on {endpoint}", timeout=30,  # noqa: B023
                           alive=server.dead)
            except RuntimeError:
                if "in use" in server.tail():
                    continue
                raise
            client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                                  aws_secret_access_key="testing", region_name="us-east-1")
            client.create_bucket(Bucket=bucket)
            yield S3(endpoint, bucket, client)
            return
    raise RuntimeError("moto_server found no free port in 3 attempts")


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answers
    except OSError:
        return False
