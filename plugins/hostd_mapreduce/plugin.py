"""The `mapreduce` batch engine plugin: a map-only Hadoop Streaming job through mrjob
(hostd_mapreduce.job), imported only when the engine runs."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from hostd import recordfiles
from hostd.hookspecs import RegisterBatchEngine, hookimpl
from hostd.offline import BatchEngine, BatchJob


def run(job: BatchJob) -> Iterator[dict[str, Any]]:
    try:
        from hostd_mapreduce.job import HostdScoringJob
    except ImportError as exc:
        raise SystemExit(f"the mapreduce engine needs mrjob: pip install 'hostd[mapreduce]' ({exc})") from None
    with tempfile.TemporaryDirectory(prefix="hostd-mapreduce-") as tmp:
        numbered, output = Path(tmp) / "input.jsonl", Path(tmp) / "output"
        with numbered.open("wb") as out:  # numbered records: Hadoop Streaming mappers see only lines
            for item in recordfiles.read_records(job.input, job.input_format):
                out.write(orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE))
        args = list(job.engine_args)
        if not any(arg in ("-r", "--runner") or arg.startswith("--runner=") for arg in args):
            args = ["-r", "inline", *args]
        # Mapper subprocesses (-r local) start in their own directory: give them the caller's sys.path
        # entries for the current directory, where `hostd` also finds models.
        python_path = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
        args += [str(numbered), "--output-dir", str(output), "--no-conf", "--cmdenv", f"PYTHONPATH={python_path}",
                 "--hostd-config", str(job.config),
                 "--hostd-model", job.model, "--hostd-chunk-size", str(job.chunk_size)]
        if job.version:
            args += ["--hostd-version", job.version]
        logging.getLogger("mrjob.conf").setLevel(logging.ERROR)  # "No configs specified": we pass --no-conf
        with HostdScoringJob(args=args).make_runner() as runner:
            try:
                runner.run()
            except Exception as exc:  # a task failed: its stderr is above
                raise SystemExit(f"hostd batch: the mapreduce job failed: {type(exc).__name__}: {exc}") from None
        for part in sorted(output.glob("part-*")):
            with part.open("rb") as lines:
                yield from (orjson.loads(line) for line in lines if line.strip())


@hookimpl
def register_batch_engines(register: RegisterBatchEngine) -> None:
    register(BatchEngine("mapreduce", run, "a Hadoop Streaming job via mrjob (-r inline|local|hadoop|emr after --)"))
