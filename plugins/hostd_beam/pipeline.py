"""The `beam` batch engine: an Apache Beam pipeline, DirectRunner by default.

    MatchFiles(input) -> read each file into numbered payload chunks -> Reshuffle -> a DoFn that loads
        the model once in setup() and scores a chunk at a time -> predictions and errors, each written by
        Beam's own sink -> _SUCCESS into the errors, then into the predictions

Everything goes through Beam's ``FileSystems`` (local, ``gs://``, ``s3://`` with ``apache-beam[aws]``),
so the same pipeline runs on a cluster: every option after `--` is a Beam pipeline option
(``--runner=FlinkRunner``, ``DataflowRunner``, ``--s3_endpoint_url=...``); ``--workers N`` alone means
``--direct_num_workers=N --direct_running_mode=multi_processing``. The counts are Beam metrics.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from hostd.offline import BatchJob, Committed
from hostd.partitions import SUCCESS, PartitionScorer, join, read_payloads, shown

# Importing Beam logs "apitools not found" on the root logger (GCP extras we do not use).
_previous = logging.root.manager.disable
logging.disable(logging.WARNING)
try:
    import apache_beam as beam
    import pyarrow as pa
    from apache_beam.io import fileio
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.metrics.metric import Metrics, MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions
finally:
    logging.disable(_previous)

NAMESPACE = "hostd"
ERRORS = "errors"


class ReadPayloads(beam.DoFn):  # type: ignore[misc]
    """A matched file, read through Beam's FileSystems into chunks of (row numbers, payloads)."""

    def __init__(self, fmt: str, size: int) -> None:
        super().__init__()
        self.format, self.size = fmt, size

    def process(self, readable: Any) -> Iterator[tuple[list[int], list[bytes]]]:
        with readable.open() as file:
            yield from read_payloads(file, self.format, self.size)


class ScorePartitions(beam.DoFn):  # type: ignore[misc]
    """Scores a chunk into its predictions (the main output) and its errors (the ``errors`` output)."""

    def __init__(self, config: str, model: str, version: str | None, input_format: str, output_format: str) -> None:
        super().__init__()
        self.arguments = (config, model, version, input_format, output_format)
        self.scorer: PartitionScorer | None = None
        self.rows = Metrics.counter(NAMESPACE, "rows")
        self.failed = Metrics.counter(NAMESPACE, "failed")

    def setup(self) -> None:  # once per DoFn instance: the model loads once per worker
        self.scorer = PartitionScorer(*self.arguments)

    def process(self, chunk: tuple[list[int], list[bytes]]) -> Iterator[Any]:
        assert self.scorer is not None
        scored = self.scorer.score(*chunk)
        failed = scored.column("failed")
        errors = scored.filter(failed)
        predictions = scored.filter(pa.compute.invert(failed))
        self.rows.inc(scored.num_rows)
        self.failed.inc(errors.num_rows)
        if self.scorer.output_format == "jsonl":  # one element per chunk: WriteToText adds the last newline
            if predictions.num_rows:
                yield "\n".join(predictions.column("line").to_pylist())
            if errors.num_rows:
                yield beam.pvalue.TaggedOutput(ERRORS, "\n".join(errors.column("line").to_pylist()))
        else:
            if predictions.num_rows:
                yield predictions.select(self.scorer.prediction_columns)
            if errors.num_rows:
                yield beam.pvalue.TaggedOutput(ERRORS, errors.select(self.scorer.error_columns))


def write(job: BatchJob) -> Committed:
    for location in (job.input, job.output, job.errors):
        if urlsplit(location).password is not None:  # Beam's S3 layer logs its URL in every retry
            raise SystemExit(f"hostd batch: Beam does not take credentials in a URL ({shown(location)}): give them "
                             "as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or after -- as --s3_access_key_id and "
                             "--s3_secret_access_key")
    options = PipelineOptions(pipeline_args(job))
    # "No shards found to finalize": what an output of no rows (skip_if_empty) rightly has.
    logging.getLogger("apache_beam.io.filebasedsink").setLevel(logging.ERROR)
    FileSystems.set_options(options)  # the markers below go through the same filesystems (an S3 endpoint)
    _clear(job.output)
    _clear(job.errors)
    driver = PartitionScorer(str(job.config), job.model, job.version, job.input_format, job.output_format)
    pipeline = beam.Pipeline(options=options)
    scored = (pipeline
              | "Match" >> fileio.MatchFiles(_pattern(job.input))
              | "Open" >> fileio.ReadMatches()
              | "Read" >> beam.ParDo(ReadPayloads(job.input_format, job.chunk_size))
              | "Spread" >> beam.Reshuffle()  # one file is read in one place; its chunks are scored everywhere
              | "Score" >> beam.ParDo(ScorePartitions(str(job.config), job.model, job.version, job.input_format,
                                                      job.output_format)).with_outputs(ERRORS, main="predictions"))
    _sink(scored.predictions, "Predictions", job.output, job.output_format, driver.schema, driver.prediction_columns)
    _sink(scored[ERRORS], "Errors", job.errors, job.output_format, driver.schema, driver.error_columns)
    result = pipeline.run()
    result.wait_until_finish()
    counters = {found.key.metric.name: found.committed
                for found in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]}
    committed = Committed(counters.get("rows", 0), counters.get("failed", 0), join(job.output, SUCCESS), job.errors)
    for location in (job.errors, job.output):  # the predictions' marker last: it says the whole job is there
        _commit(location, committed)
    return committed


def _pattern(location: str) -> str:
    """What MatchFiles takes for ``location``: the file itself where one has that name (``g[1].jsonl``
    matched ``g1.jsonl``), else the glob it is (``s3://bucket/day=*/part-*.jsonl``)."""
    return re.sub(r"([*?[])", r"[\1]", location) if FileSystems.exists(location) else location


def _commit(location: str, committed: Committed) -> None:
    """``_SUCCESS`` holding the counts: S3 refuses an empty object from Beam's uploader (a multipart
    upload of no parts)."""
    with FileSystems.create(join(location, SUCCESS)) as marker:
        marker.write(b'{"rows_in": %d, "failed": %d}\n' % (committed.rows_in, committed.failed))


def _sink(results: Any, label: str, location: str, fmt: str, schema: Any, columns: list[str]) -> None:
    prefix = join(location, "part")
    if fmt == "jsonl":
        # No empty shard: S3 refuses one from Beam's uploader, and no rows need no file.
        results | f"Write{label}" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl", skip_if_empty=True)
    else:
        results | f"Write{label}" >> beam.io.WriteToParquetBatched(
            prefix, pa.schema([schema.field(name) for name in columns]), file_name_suffix=".parquet")


def _clear(location: str) -> None:
    """An earlier run's output goes first, its marker before its parts (as Spark's overwrite): a job
    that fails part way leaves no marker, and one that succeeds commits only its own parts."""
    marker = join(location, SUCCESS)
    if FileSystems.exists(marker):
        FileSystems.delete([marker])
    found = FileSystems.match([join(location, "*")])[0].metadata_list
    if found:
        FileSystems.delete([metadata.path for metadata in found])


def pipeline_args(job: BatchJob) -> list[str]:
    args = list(job.engine_args)
    if not any(arg.startswith("--runner") for arg in args):
        args.append("--runner=DirectRunner")
    if job.workers > 1 and not any(arg.startswith("--direct_num_workers") for arg in args):
        args += [f"--direct_num_workers={job.workers}", "--direct_running_mode=multi_processing"]
    return args
