"""The `beam` batch engine: an Apache Beam pipeline, DirectRunner by default.

read numbered records -> BatchElements -> a DoFn that loads the model once in setup() and calls
predict_batch -> write results. Every option after `--` is a Beam pipeline option, so
``-- --runner=FlinkRunner`` (or SparkRunner, DataflowRunner) runs the same pipeline elsewhere;
``--workers N`` alone means ``--direct_num_workers=N --direct_running_mode=multi_processing``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from hostd import recordfiles
from hostd.offline import BatchJob, Scorer

# Importing Beam logs "apitools not found" on the root logger (GCP extras we do not use).
_previous = logging.root.manager.disable
logging.disable(logging.WARNING)
try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
finally:
    logging.disable(_previous)


class ScoreBatches(beam.DoFn):  # type: ignore[misc]
    def __init__(self, config: str, model: str, version: str | None) -> None:
        super().__init__()
        self.config, self.model, self.version = config, model, version
        self.scorer: Scorer | None = None

    def setup(self) -> None:  # once per DoFn instance: the model loads once per worker
        self.scorer = Scorer.load(self.config, self.model, self.version)

    def process(self, batch: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        assert self.scorer is not None
        yield from self.scorer.score(batch)


def run(job: BatchJob) -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="hostd-beam-") as tmp:
        numbered = Path(tmp) / "input.jsonl"
        write_numbered(job, numbered)
        with beam.Pipeline(options=PipelineOptions(pipeline_args(job))) as pipeline:
            (pipeline
             | "Read" >> beam.io.ReadFromText(str(numbered))
             | "Parse" >> beam.Map(orjson.loads)
             | "Batch" >> beam.BatchElements(min_batch_size=min(64, job.chunk_size), max_batch_size=job.chunk_size)
             | "Predict" >> beam.ParDo(ScoreBatches(str(job.config), job.model, job.version))
             | "Encode" >> beam.Map(lambda result: orjson.dumps(result).decode())
             | "Write" >> beam.io.WriteToText(str(Path(tmp) / "results"), file_name_suffix=".jsonl"))
        for shard in sorted(Path(tmp).glob("results*.jsonl")):
            with shard.open("rb") as lines:
                yield from (orjson.loads(line) for line in lines)


def pipeline_args(job: BatchJob) -> list[str]:
    args = list(job.engine_args)
    if not any(arg.startswith("--runner") for arg in args):
        args.append("--runner=DirectRunner")
    if job.workers > 1 and not any(arg.startswith("--direct_num_workers") for arg in args):
        args += [f"--direct_num_workers={job.workers}", "--direct_running_mode=multi_processing"]
    return args


def write_numbered(job: BatchJob, path: Path) -> None:
    """The input as one JSON record per line, numbered (Beam's text source has no line numbers)."""
    with path.open("wb") as out:
        for item in recordfiles.read_records(job.input, job.input_format):
            out.write(orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE))
