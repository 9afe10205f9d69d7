"""`hostd batch` on real clusters and on S3, row for row the same as the local engine on the same input:
a Spark standalone cluster (a master, two workers), a Ray cluster (`ray start --head`), and S3 (moto)
for beam, ray and spark (S3A); and a run that fails part way commits nothing.

Every cluster runs on 127.0.0.1, once per module, started the first time a run needs it and stopped
by PID once its runs are done (tests/batch/clusters.py). The runs are slow to start (JVMs, Ray, Beam),
so they all start when the module does, in three lanes at once (LANES), in the background; each test
then checks its own. Only the local engine keeps the input order, so rows are compared as multisets.
"""

from __future__ import annotations

import functools
import io
import json
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.batch.clusters import (
    READY_S,
    S3,
    S3_KEYS,
    RayCluster,
    Run,
    SparkCluster,
    directory_rows,
    environ,
    hostd_batch,
    moto_s3,
    ray_head,
    spark_standalone,
    wait_until,
)
from tests.batch.helpers import Case, by_input, check_outputs, make_case

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

MODEL = "iris_model"
COUNT = 2000
RUN_S = 300.0
#: S3A for the spark engine, made by `make test` (scripts/spark_s3_jars.sh): hadoop-aws 3.3.1 and its SDK.
S3_JARS = Path(sys.executable).parents[1] / "spark-s3-jars"
S3A_JARS = ("hadoop-aws-3.3.1.jar", "aws-java-sdk-bundle-1.11.901.jar")


@dataclass
class Outcome:
    run: Run
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    where: str = ""  # the output location (a directory or a URL)
    cluster: Any = None
    apps: list[dict[str, Any]] = field(default_factory=list)  # a Spark master's completed applications


# -- the clusters ---------------------------------------------------------------------------------

class Clusters:
    """Each cluster started once, by the first run that needs it (in that run's thread), and stopped
    by the lane that used it once its runs are done (or when the module ends)."""

    def __init__(self, folder: Path, inputs: dict[str, Path]) -> None:
        self.folder, self.inputs = folder, inputs  # uploaded to s3://bucket/<key>
        self._lock = threading.Lock()
        self._made: dict[str, Future[Any]] = {}
        self._stacks: dict[str, ExitStack] = {}

    def get(self, name: str) -> Any:
        with self._lock:
            future, owner = self._made.get(name), False
            if future is None:
                future, owner = self._made.setdefault(name, Future()), True
                self._stacks[name] = ExitStack()
        if owner:
            try:
                future.set_result(self._start(name, self._stacks[name]))
            except BaseException as exc:
                future.set_exception(exc)
        return future.result(timeout=3 * READY_S)

    def release(self, name: str) -> None:
        """Stop cluster ``name`` now (a later ``get`` starts another)."""
        with self._lock:
            self._made.pop(name, None)
            stack = self._stacks.pop(name, None)
        if stack is not None:
            stack.close()

    def close(self) -> None:
        for name in reversed(list(self._stacks)):
            self.release(name)

    def _start(self, name: str, stack: ExitStack) -> Any:
        if name == "s3":
            s3: S3 = stack.enter_context(moto_s3(self.folder / "moto"))
            for key, path in self.inputs.items():
                s3.put(key, path.read_bytes())
            return s3
        if name == "spark":
            return stack.enter_context(spark_standalone(self.folder / "spark"))
        if name == "ray":
            # The workers reach S3 as the driver does: the endpoint and keys are the cluster's environment.
            s3 = self.get("s3")
            # Short, for the Unix sockets Ray keeps there (pytest's tmp paths are too long for them).
            temp_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hostd-ray-", dir="/tmp")))
            return stack.enter_context(ray_head(self.folder / "ray", temp_dir,
                                                env_extra={"AWS_ENDPOINT_URL": s3.endpoint, **S3_KEYS}))
        raise KeyError(name)


# -- the runs -------------------------------------------------------------------------------------

def s3_env() -> dict[str, str]:
    return environ(**S3_KEYS)


def spark_env() -> dict[str, str]:
    return environ(SPARK_LOCAL_IP="127.0.0.1")


#: JVMs that live seconds: C1 only (C2 compiles cost more CPU than they save here), one GC thread,
#: no web UI for the driver. They halve the CPU time of a Spark run on 2 cores.
QUICK_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
SPARK_QUICK = ("--conf", f"spark.driver.extraJavaOptions={QUICK_JVM}", "--conf",
               f"spark.executor.extraJavaOptions={QUICK_JVM}", "--conf", "spark.ui.enabled=false")


def s3a_options(s3: S3) -> list[str]:
    """S3A for the spark engine on moto. hadoop-aws 3.3.1 cannot read Hadoop 3.5's "60s"-style
    defaults for four durations, so they are given as plain numbers."""
    missing = [name for name in S3A_JARS if not (S3_JARS / name).is_file()]
    assert not missing, (f"{', '.join(missing)} missing from {S3_JARS}: run scripts/spark_s3_jars.sh "
                         f"{S3_JARS} (make test does)")
    settings = {"endpoint": s3.endpoint, "path.style.access": "true", "connection.ssl.enabled": "false",
                "access.key": "testing", "secret.key": "testing", "endpoint.region": "us-east-1",
                "aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
                "connection.establish.timeout": "30000", "connection.timeout": "200000",
                "threads.keepalivetime": "60", "multipart.purge.age": "86400"}
    return ["--jars", ",".join(str(S3_JARS / name) for name in S3A_JARS),
            *(item for key, value in settings.items() for item in ("--conf", f"spark.hadoop.fs.s3a.{key}={value}"))]


def beam_s3_options(s3: S3) -> list[str]:
    return [f"--s3_endpoint_url={s3.endpoint}", "--s3_access_key_id=testing", "--s3_secret_access_key=testing",
            "--s3_region_name=us-east-1"]


def errors_of(output: str) -> str:
    stem, _, extension = output.rpartition(".")
    return f"{stem}.errors.{extension}"


#: The runs in lanes, each lane's runs one after the other, the lanes at once: a lane per cluster
#: (two jobs at once on a 2-CPU Ray would wait for each other's CPUs), which stops it when its runs
#: are done, and the rest in a third, about as long. More at once only slow each run on 2 cores.
LANES: tuple[tuple[tuple[str, ...], str | None], ...] = (
    (("spark-cluster", "failed-spark"), "spark"),
    (("ray-cluster", "ray-s3", "failed-ray"), "ray"),
    (("local", "spark-s3", "beam-s3", "beam-s3-clean", "failed-beam"), None))


class Runs:
    """The runs the selected tests check, started in LANES when the module starts; ``runs[name]``
    waits for one (or runs it here if no lane has it)."""

    def __init__(self, folder: Path, case: Case, clusters: Clusters) -> None:
        self.folder, self.case, self.clusters = folder, case, clusters
        self.case_file = clusters.inputs["in.jsonl"]
        self.futures: dict[str, Future[Outcome]] = {}
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(len(LANES), thread_name_prefix="hostd-batch")
        self.jobs: dict[str, Callable[[], Outcome]] = {
            "local": self.local, "spark-cluster": self.spark_cluster, "ray-cluster": self.ray_cluster,
            "beam-s3": self.beam_s3, "beam-s3-clean": self.beam_s3_clean, "ray-s3": self.ray_s3,
            "spark-s3": self.spark_s3,
            **{f"failed-{engine}": functools.partial(self.failed, engine) for engine in FAILING}}

    def start(self, wanted: set[str]) -> None:
        for lane, cluster in LANES:
            names = [name for name in lane if name in wanted]
            for name in names:
                self.futures[name] = Future()
            if names:
                self.pool.submit(self._lane, names, cluster)

    def _lane(self, names: list[str], cluster: str | None) -> None:
        for name in names:
            future = self.futures[name]
            if self.stopping.is_set() or not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self.jobs[name]())
            except BaseException as exc:  # the test that checks this run reports it
                future.set_exception(exc)
        if cluster is not None:
            self.clusters.release(cluster)  # while the other lanes run

    def __getitem__(self, name: str) -> Outcome:
        if name not in self.futures:  # a test that did not say it uses this run
            future: Future[Outcome] = Future()
            future.set_result(self.jobs[name]())
            self.futures[name] = future
        return self.futures[name].result(timeout=RUN_S + 3 * READY_S)

    def close(self) -> None:
        self.stopping.set()
        for future in self.futures.values():
            future.cancel()
        self.pool.shutdown(wait=True)

    # -- each run ---------------------------------------------------------------------------------

    def local(self) -> Outcome:
        output = self.folder / "local" / "out.jsonl"
        output.parent.mkdir()
        run = hostd_batch(MODEL, self.case_file, output, "--engine", "local", "--allow-errors", timeout=RUN_S)
        assert run.returncode == 0, run.explain()
        rows, errors = check_outputs(self.case, output)  # the reference holds what the case says it should
        return Outcome(run, rows, errors, str(output))

    def spark_cluster(self) -> Outcome:
        cluster: SparkCluster = self.clusters.get("spark")
        output = self.folder / "spark-cluster" / "out.jsonl"
        # Parts of 64 KiB: the file is read as several partitions, scored on both workers.
        run = hostd_batch(MODEL, self.case_file, output, "--engine", "spark", "--allow-errors", "--",
                          "--master", cluster.master, "--conf", "spark.sql.files.maxPartitionBytes=65536",
                          *SPARK_QUICK, env=spark_env(), timeout=RUN_S)
        outcome = self._read_directory(run, output, cluster)
        if run.returncode == 0:  # what the master says of it, before the lane stops the cluster

            def finished() -> list[dict[str, Any]]:
                return [app for app in cluster.status()["completedapps"] if app["name"] == "hostd batch"]

            outcome.apps = wait_until(finished, f"{cluster.ui}/json/ to list 'hostd batch' as completed", timeout=30)
        return outcome

    def ray_cluster(self) -> Outcome:
        cluster: RayCluster = self.clusters.get("ray")
        output = self.folder / "ray-cluster" / "out.jsonl"
        run = hostd_batch(MODEL, self.case_file, output, "--engine", "ray", "--workers", "1", "--chunk-size", "500",
                          "--allow-errors", "--", "--address", cluster.address, env=cluster.env, timeout=RUN_S)
        return self._read_directory(run, output, cluster)

    def _read_directory(self, run: Run, output: Path, cluster: Any) -> Outcome:
        if run.returncode != 0:
            return Outcome(run, where=str(output), cluster=cluster)
        return Outcome(run, directory_rows(output), directory_rows(Path(errors_of(str(output)))), str(output), cluster)

    def beam_s3(self) -> Outcome:
        s3: S3 = self.clusters.get("s3")
        run = hostd_batch(MODEL, "s3://bucket/in.jsonl", "s3://bucket/beam/out.jsonl", "--engine", "beam",
                          "--allow-errors", "--", *beam_s3_options(s3), env=s3_env(), timeout=RUN_S)
        return self._read_s3(run, s3, "beam/out.jsonl")

    def beam_s3_clean(self) -> Outcome:
        s3: S3 = self.clusters.get("s3")
        run = hostd_batch(MODEL, "s3://bucket/clean.jsonl", "s3://bucket/beam-clean/out.jsonl", "--engine", "beam",
                          "--", *beam_s3_options(s3), env=s3_env(), timeout=RUN_S)
        return self._read_s3(run, s3, "beam-clean/out.jsonl")

    def ray_s3(self) -> Outcome:
        cluster: RayCluster = self.clusters.get("ray")  # its environment has the endpoint and the keys
        s3: S3 = self.clusters.get("s3")
        run = hostd_batch(MODEL, "s3://bucket/in.jsonl", "s3://bucket/ray/out.jsonl", "--engine", "ray",
                          "--workers", "1", "--allow-errors", "--", "--address", cluster.address, env=cluster.env,
                          timeout=RUN_S)
        return self._read_s3(run, s3, "ray/out.jsonl", cluster)

    def spark_s3(self) -> Outcome:
        s3: S3 = self.clusters.get("s3")
        run = hostd_batch(MODEL, "s3a://bucket/in.jsonl", "s3a://bucket/spark/out.jsonl", "--engine", "spark",
                          "--allow-errors", "--", "--master", "local[2]", *s3a_options(s3), *SPARK_QUICK,
                          env=spark_env(), timeout=RUN_S)
        return self._read_s3(run, s3, "spark/out.jsonl")

    def _read_s3(self, run: Run, s3: S3, prefix: str, cluster: Any = None) -> Outcome:
        return Outcome(run, s3.rows(prefix), s3.rows(errors_of(prefix)), prefix, cluster)

    def failed(self, engine: str) -> Outcome:
        """An earlier run's committed output, then a run into the same place whose input (Parquet)
        turns out to be corrupt: the engine has started, cleared or kept the old marker, and fails."""
        s3: S3 = self.clusters.get("s3")
        prefix = f"failed/{engine}/out.parquet"
        earlier = io.BytesIO()
        pq.write_table(pa.table({"id": ["iris-00000"], "species": ["Iris setosa"]}), earlier)
        s3.put(f"{prefix}/part-00000.parquet", earlier.getvalue())
        s3.put(f"{prefix}/_SUCCESS", b"")
        s3.put("failed/in.parquet", b"PAR1" + b"\x00not parquet: the upload was cut short" * 100)
        scheme, options, env = "s3", beam_s3_options(s3), s3_env()
        if engine == "spark":
            scheme, options, env = "s3a", ["--master", "local[1]", *s3a_options(s3), *SPARK_QUICK], spark_env()
        elif engine == "ray":
            cluster: RayCluster = self.clusters.get("ray")
            options, env = ["--address", cluster.address], cluster.env
        run = hostd_batch(MODEL, f"{scheme}://bucket/failed/in.parquet", f"{scheme}://bucket/{prefix}",
                          "--engine", engine, "--allow-errors", "--", *options, env=env, timeout=RUN_S)
        return Outcome(run, where=prefix)


FAILING = ("beam", "ray", "spark")


def clean(case: Case) -> Case:
    """The case's good rows only (and its blank lines), each with an id."""
    return case.only(lambda entry: entry.code is None and (entry.blank or entry.id is not None))


@pytest.fixture(scope="module")
def case() -> Case:
    return make_case(MODEL, COUNT)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, case: Case) -> Iterator[Runs]:
    """The module's runs: those its selected tests check, started at once (in LANES)."""
    folder = tmp_path_factory.mktemp("clusters")
    with ExitStack() as stack:
        clusters = Clusters(folder, {"in.jsonl": case.write_jsonl(folder / "in.jsonl"),
                                     "clean.jsonl": clean(case).write_jsonl(folder / "clean.jsonl")})
        stack.callback(clusters.close)
        started = Runs(folder, case, clusters)
        stack.callback(started.close)  # the runs end before the clusters stop
        wanted = {name.format(**getattr(getattr(item, "callspec", None), "params", {}))
                  for item in request.session.items
                  if isinstance(item, pytest.Function) and item.module is request.module
                  for name in getattr(item.function, "runs", ())}
        started.start(wanted)
        yield started


def uses(*names: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The runs a test checks (started early by ``runs``); ``{engine}`` stands for the test's parameter."""
    def mark(test: Callable[..., None]) -> Callable[..., None]:
        test.runs = names  # type: ignore[attr-defined]
        return test
    return mark


# -- what every run must give ---------------------------------------------------------------------

def canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True)


def assert_same_rows(outcome: Outcome, reference: Outcome, case: Case, engine: str) -> None:
    """The rows the engine wrote are the local engine's: every prediction once (the same ids with the
    same predictions), every failed row once with the same row number, id and code, and a message
    that names the field."""
    got, wanted = Counter(map(canonical, outcome.rows)), Counter(map(canonical, reference.rows))
    assert got == wanted, (f"{engine}: {sum((got - wanted).values())} rows the local engine has not, "
                           f"{sum((wanted - got).values())} of its rows missing, e.g. {list(got - wanted)[:3]} / "
                           f"{list(wanted - got)[:3]}\n{outcome.run.explain()}")
    keys = Counter((error["row"], error["id"], error["code"]) for error in outcome.errors)
    assert keys == Counter((error["row"], error["id"], error["code"]) for error in reference.errors), \
        outcome.run.explain()
    expected = case.expected().errors
    for error in outcome.errors:
        assert expected[error["row"]][2] in error["message"], error


def assert_same_as_local(outcome: Outcome, reference: Outcome, case: Case, engine: str, marker: str) -> None:
    """A run that went well, wrote the local engine's rows, counted them as it did, and says where
    its marker is."""
    run = outcome.run
    assert run.returncode == 0, run.explain()
    assert_same_rows(outcome, reference, case, engine)
    assert run.summary() == (*reference.run.summary()[:3], engine), run.explain()
    assert run.committed() == marker, run.explain()


# -- the tests ------------------------------------------------------------------------------------

@uses("local", "spark-cluster")
def test_spark_standalone_cluster_scores_as_the_local_engine(runs: Runs, case: Case) -> None:
    """`-- --master spark://...`: the input read as four partitions, scored by executors on both workers."""
    outcome = runs["spark-cluster"]
    assert_same_as_local(outcome, runs["local"], case, "spark", f"{outcome.where}/_SUCCESS")
    output = Path(outcome.where)
    assert (output / "_SUCCESS").is_file() and (Path(errors_of(outcome.where)) / "_SUCCESS").is_file()
    # It ran on the cluster: the master lists it as a finished application, and each worker ran an
    # executor for it (its work dir has the application's directory, with the executor's logs).
    cluster: SparkCluster = outcome.cluster
    apps = outcome.apps
    assert len(apps) == 1 and apps[0]["state"] == "FINISHED", apps
    for work_dir in cluster.work_dirs:
        executors = list((work_dir / apps[0]["id"]).glob("*/stderr"))
        assert executors, f"no executor of {apps[0]['id']} ran in {work_dir}: {list(work_dir.iterdir())}"


@uses("local", "ray-cluster")
def test_ray_cluster_scores_as_the_local_engine(runs: Runs, case: Case) -> None:
    """`--workers 1 -- --address 127.0.0.1:PORT`: one actor on a running cluster, in chunks of 500."""
    outcome = runs["ray-cluster"]
    assert_same_as_local(outcome, runs["local"], case, "ray", f"{outcome.where}/_SUCCESS")
    assert (Path(errors_of(outcome.where)) / "_SUCCESS").is_file()
    # It attached to the cluster (it did not start a Ray of its own), whose session has the job's logs.
    cluster: RayCluster = outcome.cluster
    stderr = outcome.run.stderr
    assert f"Connecting to existing Ray cluster at address: {cluster.address}" in stderr, outcome.run.explain()
    assert f"Full logs are in {cluster.temp_dir}/session_" in stderr, outcome.run.explain()


@uses("local", "beam-s3")
def test_beam_on_s3_scores_as_the_local_engine(runs: Runs, case: Case) -> None:
    """s3:// URLs, the endpoint and keys as Beam pipeline options (--s3_endpoint_url ...)."""
    outcome, s3 = runs["beam-s3"], runs.clusters.get("s3")
    assert_same_rows(outcome, runs["local"], case, "beam")
    assert_same_as_local(outcome, runs["local"], case, "beam", "s3://bucket/beam/out.jsonl/_SUCCESS")
    assert s3.committed("beam/out.jsonl") and s3.committed("beam/out.errors.jsonl")


@uses("local", "beam-s3-clean")
def test_beam_on_s3_with_no_failed_row_commits_an_empty_errors_directory(runs: Runs, case: Case) -> None:
    """No failed row: the errors' directory has its marker and no part (Beam's S3 uploader cannot
    write an empty object, so an empty shard would fail the job); the predictions are the local
    engine's for the same records."""
    outcome, s3, reference = runs["beam-s3-clean"], runs.clusters.get("s3"), runs["local"]
    run, good = outcome.run, clean(case)
    assert run.returncode == 0, run.explain()
    count = len(good.expected().ids)
    assert run.summary() == (count, count, 0, "beam"), run.explain()
    assert Counter(row["id"] for row in outcome.rows) == Counter(good.expected().ids)
    assert by_input(good, outcome.rows) == by_input(case, reference.rows)
    assert s3.committed("beam-clean/out.jsonl") and s3.committed("beam-clean/out.errors.jsonl")
    assert s3.parts("beam-clean/out.errors.jsonl") == []


@uses("local", "ray-s3")
def test_ray_on_s3_scores_as_the_local_engine(runs: Runs, case: Case) -> None:
    """Plain s3:// URLs, the endpoint and keys in the environment (AWS_ENDPOINT_URL ...) of the driver
    and of the cluster's workers."""
    outcome, s3 = runs["ray-s3"], runs.clusters.get("s3")
    assert_same_as_local(outcome, runs["local"], case, "ray", "s3://bucket/ray/out.jsonl/_SUCCESS")
    assert s3.committed("ray/out.jsonl") and s3.committed("ray/out.errors.jsonl")
    assert f"Connecting to existing Ray cluster at address: {outcome.cluster.address}" in outcome.run.stderr


@uses("local", "spark-s3")
def test_spark_on_s3a_scores_as_the_local_engine(runs: Runs, case: Case) -> None:
    """s3a:// URLs on `local[2]`, hadoop-aws given with --jars and configured with --conf."""
    outcome, s3 = runs["spark-s3"], runs.clusters.get("s3")
    assert_same_as_local(outcome, runs["local"], case, "spark", "s3a://bucket/spark/out.jsonl/_SUCCESS")
    assert s3.committed("spark/out.jsonl") and s3.committed("spark/out.errors.jsonl")


@pytest.mark.parametrize("engine", FAILING)
@uses("failed-{engine}")
def test_a_run_that_fails_part_way_leaves_no_success_marker(runs: Runs, engine: str) -> None:
    """Into an S3 output an earlier run committed, a run whose input is corrupt Parquet: it fails once
    the engine reads it (ray: in a read task on the cluster; beam: in a DoFn; spark: planning the
    read), exits non-zero, says it committed nothing, and no _SUCCESS is left to say otherwise."""
    outcome, s3 = runs[f"failed-{engine}"], runs.clusters.get("s3")
    run = outcome.run
    assert run.returncode != 0, run.explain()
    assert "hostd batch: committed" not in run.stderr, run.explain()
    assert not s3.committed(outcome.where), (f"{engine}: s3://bucket/{outcome.where}/_SUCCESS is still there "
                                             f"after a failed run:\n{run.explain()}")
