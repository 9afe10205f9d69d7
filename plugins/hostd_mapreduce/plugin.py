"""The `mapreduce` batch engine plugin: a map-only Hadoop Streaming job through mrjob
(hostd_mapreduce.job), imported only when the engine runs.

The job writes straight into the output directory (local, ``hdfs://`` or ``s3://``, through mrjob's
filesystem layer) and counts rows in Hadoop counters. Hadoop Streaming has one output per job, so a
failed row's line goes there too: ``{"row", "id", "code", "message"}`` beside the predictions'
``{"id", "prediction"}``. A local input file is numbered first (a mapper sees only lines); an input
already on the cluster is read as it is, and its records keep their ids but have no row numbers.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import orjson

from hostd import recordfiles
from hostd.hookspecs import RegisterBatchEngine, hookimpl
from hostd.offline import BatchEngine, BatchJob, Committed
from hostd.partitions import SUCCESS, join, shown

NAMESPACE = "hostd"


def write(job: BatchJob) -> Committed:
    try:
        from hostd_mapreduce.job import HostdScoringJob
    except ImportError as exc:
        raise SystemExit(f"the mapreduce engine needs mrjob: pip install 'hostd[mapreduce]' ({exc})") from None
    with tempfile.TemporaryDirectory(prefix="hostd-mapreduce-") as tmp:
        source = job.input if "://" in job.input else _numbered(job, Path(tmp) / "input.jsonl")
        args = list(job.engine_args)
        if not any(arg in ("-r", "--runner") or arg.startswith("--runner=") for arg in args):
            args = ["-r", "inline", *args]
        # Mapper subprocesses (-r local) start in their own directory: give them the caller's sys.path
        # entries for the current directory, where `hostd` also finds models.
        python_path = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
        args += [source, "--output-dir", job.output, "--no-conf", "--cmdenv", f"PYTHONPATH={python_path}",
                 "--hostd-config", str(job.config),
                 "--hostd-model", job.model, "--hostd-chunk-size", str(job.chunk_size)]
        if job.version:
            args += ["--hostd-version", job.version]
        logging.getLogger("mrjob.conf").setLevel(logging.ERROR)  # "No configs specified": we pass --no-conf
        with HostdScoringJob(args=args).make_runner() as runner:
            if runner.fs.exists(job.output):  # as Spark's overwrite: an earlier run's output (and marker) goes
                runner.fs.rm(job.output)
            try:
                runner.run()
            except Exception as exc:  # a task failed: its stderr is above
                said = str(exc).replace(job.input, shown(job.input)).replace(job.output, shown(job.output))
                raise SystemExit(f"hostd batch: the mapreduce job failed: {type(exc).__name__}: {said}") from None
            counters: dict[str, int] = {}
            for step in runner.counters():
                for name, amount in step.get(NAMESPACE, {}).items():
                    counters[name] = counters.get(name, 0) + amount
            marker = join(job.output, SUCCESS)
            if not runner.fs.exists(marker):  # Hadoop's committer writes it; mrjob's local runners do not
                runner.fs.touchz(marker)
    return Committed(counters.get("rows", 0), counters.get("failed", 0), marker, job.output)


def _numbered(job: BatchJob, path: Path) -> str:
    """The input as numbered records, one JSON line each: Hadoop Streaming mappers see only lines."""
    with path.open("wb") as out:
        for item in recordfiles.read_records(Path(job.input), job.input_format):
            out.write(orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE))
    return str(path)


@hookimpl
def register_batch_engines(register: RegisterBatchEngine) -> None:
    register(BatchEngine("mapreduce", None, "a Hadoop Streaming job via mrjob (-r inline|local|hadoop|emr after --)",
                         write=write,
                         output_formats=("jsonl",)))
