"""The `spark` batch engine: read with Spark's own readers, score each partition in Arrow batches with
the model loaded once per Python worker, write with Spark's own writers.

    input (text | a CSV file per task | parquet) -> rows numbered -> mapInArrow(PartitionScorer)
        -> persisted scored table -> errors written, then predictions written (Spark's committer writes
        _SUCCESS last) -> counts

Everything after `--` configures the session as spark-submit would: ``--master spark://host:7077``,
``--conf key=value`` (repeatable), ``--name``, ``--jars``. Without ``--master`` the job runs on
``local[*]``, or on whatever a spark-submit that runs ``hostd batch`` configured.
"""

from __future__ import annotations

import functools
import io
import os
import posixpath
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hostd.offline import BatchJob, Committed
from hostd.partitions import SUCCESS, PartitionScorer, join, path_of, read_payloads, shown

# pyspark warns (when a job starts) that it "does not yet fully support pandas >= 3": this job uses no pandas.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)

#: monotonically_increasing_id() puts the partition's index above bit 33 and the row's place in the
#: partition below it: with the rows per partition counted, rows are numbered in file order.
_PARTITION_SHIFT = 33
CSV_CHUNK = 4096  # CSV records per Arrow batch a task hands on

_scorers: dict[tuple[str, ...], PartitionScorer] = {}  # per Python worker (Spark reuses its workers)


def write(job: BatchJob) -> Committed:
    spark = session(job.engine_args, job.progress)
    _clear_markers(spark, job.output, job.errors)
    driver = PartitionScorer(str(job.config), job.model, job.version, job.input_format, job.output_format)
    scored = score(numbered(spark, job), job, driver.schema).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = {row["failed"]: row["count"] for row in scored.groupBy("failed").count().collect()}
        # The errors first: the predictions' _SUCCESS, written last, then says the whole job is there.
        _save(scored.filter(F.col("failed")).select(*driver.error_columns), job.errors, job.output_format)
        _save(scored.filter(~F.col("failed")).select(*driver.prediction_columns), job.output, job.output_format)
    finally:
        scored.unpersist()
    return Committed(sum(counts.values()), counts.get(True, 0), join(job.output, SUCCESS), job.errors)


def session(engine_args: tuple[str, ...], progress: bool = False) -> SparkSession:
    """A session configured by spark-submit's options; the Python workers run this interpreter."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("hostd batch")
    options = _options(engine_args)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not run by spark-submit, which sets the master itself
        options.setdefault("spark.master", "local[*]")
    options.setdefault("spark.ui.showConsoleProgress", "true" if progress else "false")
    # The job's only shuffles are two counts (rows per partition, failed or not): Spark's default of 200
    # partitions for them cost ~6 s a run on local[2].
    options.setdefault("spark.sql.shuffle.partitions", "8")
    for key, value in options.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _options(engine_args: tuple[str, ...]) -> dict[str, str]:
    names = {"--master": "spark.master", "--name": "spark.app.name", "--jars": "spark.jars",
             "--driver-memory": "spark.driver.memory", "--executor-memory": "spark.executor.memory",
             "--total-executor-cores": "spark.cores.max", "--executor-cores": "spark.executor.cores"}
    options: dict[str, str] = {}
    args = list(engine_args)
    while args:
        arg = args.pop(0)
        flag, _, value = arg.partition("=")
        if flag not in names and flag != "--conf":
            raise SystemExit(f"hostd batch: the spark engine takes {', '.join([*names, '--conf'])} after --, "
                             f"not {arg}")
        if not value:
            if not args:
                raise SystemExit(f"hostd batch: {flag} needs a value")
            value = args.pop(0)
        if flag == "--conf":
            key, equals, setting = value.partition("=")
            if not equals:
                raise SystemExit(f"hostd batch: --conf takes key=value, not {value}")
            options[key] = setting
        else:
            options[names[flag]] = value
    return options


def numbered(spark: SparkSession, job: BatchJob) -> DataFrame:
    """The input as (row, payload): each record's number in the file and its JSON text."""
    if posixpath.basename(path_of(job.input).rstrip("/")).startswith(("_", ".")):
        raise SystemExit(f"hostd batch: Spark (Hadoop) reads no file whose name starts with _ or . "
                         f"(it takes them for its own): rename {shown(job.input)}")
    if job.input_format == "jsonl":
        lines = spark.read.option("lineSep", "\n").text(job.input)  # as the others: a bare \r ends no line
        # As bytes: a line that is not UTF-8 is its row's error, as on the other engines, not the job's.
        frame = lines.filter(~F.col("value").rlike(r"^\s*$")).select(F.col("value").cast("binary").alias("payload"))
    elif job.input_format == "csv":
        # Not Spark's CSV reader: it parses otherwise than every other engine (a bare \r, a short row, an
        # empty cell, a surplus cell dropped without a word). Each file is read whole by one task and parsed
        # by the reader the others use, in file order: split a big CSV into files to spread it.
        files = spark.read.format("binaryFile").load(job.input).select("content")
        frame = files.mapInArrow(_csv_payloads, T.StructType([T.StructField("payload", T.BinaryType())]))
    else:
        table = spark.read.parquet(job.input)
        # A binary column as UTF-8 text, as recordfiles.json_ready gives it to the other engines (to_json would
        # write base64).
        frame = table.select(_as_json([F.col(f"`{field.name}`").cast("string").alias(field.name)
                                       if isinstance(field.dataType, T.BinaryType) else F.col(f"`{field.name}`")
                                       for field in table.schema.fields]).alias("payload"))
    frame = frame.withColumn("_place", F.monotonically_increasing_id())
    sizes = frame.groupBy(F.shiftright("_place", _PARTITION_SHIFT).alias("partition")).count().collect()
    starts, total = {}, 0
    for size in sorted(sizes, key=lambda found: found["partition"]):
        starts[size["partition"]], total = total, total + size["count"]
    return frame.select(_row_number(starts).alias("row"), "payload")


def _as_json(columns: list[Column]) -> Column:
    return F.to_json(F.struct(*columns), {"ignoreNullFields": "false"})


def _row_number(starts: dict[int, int]) -> Column:
    partition = F.shiftright("_place", _PARTITION_SHIFT)
    start = F.create_map(*[F.lit(value) for pair in starts.items() for value in pair]) if starts else None
    place = F.col("_place").bitwiseAND((1 << _PARTITION_SHIFT) - 1)
    return (F.element_at(start, partition) if start is not None else F.lit(0)) + place + 1


def score(rows: DataFrame, job: BatchJob, schema: Any) -> DataFrame:
    key = (str(job.config), job.model, job.version or "", job.input_format, job.output_format)
    # A partial of a module-level function pickles by reference: the worker's _scorers is its own.
    return rows.mapInArrow(functools.partial(_score_partition, key), spark_schema(schema))


_SPARK_TYPES = {"bool": T.BooleanType, "string": T.StringType, "int64": T.LongType, "double": T.DoubleType}


def spark_schema(schema: Any) -> T.StructType:
    """A scored table's Arrow schema as Spark's (pyspark's own converter needs pandas, which we do not)."""
    return T.StructType([T.StructField(field.name, _SPARK_TYPES[str(field.type)](), True) for field in schema])


def _csv_payloads(batches: Iterator[Any]) -> Iterator[Any]:
    """Each file's CSV records, as JSON payloads, in file order (hostd.partitions reads them)."""
    import pyarrow as pa
    for batch in batches:
        for content in batch.column("content").to_pylist():
            for _, payloads in read_payloads(io.BytesIO(content), "csv", CSV_CHUNK):
                yield pa.RecordBatch.from_arrays([pa.array(payloads, pa.binary())], ["payload"])


def _score_partition(key: tuple[str, ...], batches: Iterator[Any]) -> Iterator[Any]:
    if key not in _scorers:  # once per Python worker: the model loads once, not per partition
        config, model, version, input_format, output_format = key
        _scorers[key] = PartitionScorer(config, model, version or None, input_format, output_format)
    return _scorers[key].score_batches(batches)


def _clear_markers(spark: SparkSession, *locations: str) -> None:
    """A job that fails part way must not leave an earlier run's marker behind (Spark's overwrite
    removes it only when the write starts, after the scoring)."""
    hadoop = spark._jvm.org.apache.hadoop.fs  # type: ignore[union-attr]
    for location in locations:
        marker = hadoop.Path(join(location, SUCCESS))
        filesystem = marker.getFileSystem(spark._jsc.hadoopConfiguration())  # type: ignore[union-attr]
        if filesystem.exists(marker):
            filesystem.delete(marker, False)


def _save(frame: DataFrame, location: str, fmt: str) -> None:
    writer = frame.write.mode("overwrite")
    if fmt == "jsonl":
        writer.text(location)
    else:
        writer.parquet(location)
