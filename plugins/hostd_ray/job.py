"""The `ray` batch engine: Ray Data reads the input, actors that each load the model once score it in
batches, and Ray Data writes the results.

    read (a datasource numbering each file's records) -> map_batches(actor: PartitionScorer) -> materialize
        -> errors written, then predictions written -> _SUCCESS into each, predictions last

``--workers N`` is the number of actors (model replicas). After `--`: ``--address`` (a running
cluster: ``auto``, ``host:6379`` or ``ray://host:10001``) and ``--num-cpus`` (a Ray started here).
Paths and URLs go through pyarrow's filesystems (local, ``s3://``, ``gs://``, ``hdfs://``); an S3
endpoint of your own goes in the URL, as pyarrow reads it: ``s3://bucket/x?endpoint_override=host:port&scheme=http``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pyarrow import fs as pafs
from ray.data.block import BlockAccessor
from ray.data.datasource import BlockBasedFileDatasink, FileBasedDatasource
from ray.data.datasource.file_datasink import SaveMode

from hostd.offline import BatchJob, Committed
from hostd.partitions import SUCCESS, PartitionScorer, join, read_payloads


def write(job: BatchJob) -> Committed:
    options = _options(job.engine_args)
    started_here = not ray.is_initialized()
    if started_here:
        _start(options)
    try:
        return _write(job)
    finally:
        if started_here:
            ray.shutdown()


def _write(job: BatchJob) -> Committed:
    ray.data.DataContext.get_current().enable_progress_bars = job.progress
    driver = PartitionScorer(str(job.config), job.model, job.version, job.input_format, job.output_format)
    input_fs, input_path = pafs.FileSystem.from_uri(job.input)
    output_fs, output_path = pafs.FileSystem.from_uri(job.output)
    errors_fs, errors_path = pafs.FileSystem.from_uri(job.errors)
    _clear_marker(output_fs, output_path)
    _clear_marker(errors_fs, errors_path)
    source = _PayloadSource(input_path, job.input_format, job.chunk_size, filesystem=input_fs)
    scored = (ray.data.read_datasource(source)
              .map_batches(_Score, fn_constructor_args=(str(job.config), job.model, job.version, job.input_format,
                                                         job.output_format),
                           batch_format="pyarrow", batch_size=job.chunk_size,
                           # 1 to N actors: with as many actors as CPUs, none would be left to read the input
                           concurrency=(1, job.workers))
              .materialize())  # scored once: the counts and both writes read it
    total, failed = scored.count(), int(scored.sum("failed") or 0)
    # The errors first: the predictions' _SUCCESS, written last, then says the whole job is there.
    _save(_part(scored, failed=True, columns=driver.error_columns), errors_fs, errors_path, job.output_format)
    _save(_part(scored, failed=False, columns=driver.prediction_columns), output_fs, output_path, job.output_format)
    return Committed(total, failed, join(job.output, SUCCESS), job.errors)


def _options(engine_args: tuple[str, ...]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hostd batch --engine ray --", add_help=False, exit_on_error=False)
    parser.add_argument("--address", default=None)
    parser.add_argument("--num-cpus", type=int, default=None)
    try:
        return parser.parse_args(list(engine_args))
    except (argparse.ArgumentError, SystemExit):
        raise SystemExit("hostd batch: the ray engine takes --address and --num-cpus after --, "
                         f"not {' '.join(engine_args)}") from None


def _start(options: argparse.Namespace) -> None:
    if options.address:
        ray.init(address=options.address, log_to_driver=True)
        return
    # A Ray of our own, for this job only, on loopback.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=options.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1")


class _PayloadSource(FileBasedDatasource):  # type: ignore[misc]
    """Each file read whole by one task (so its rows are numbered as the local engine numbers them),
    into blocks of ``row`` and ``payload``."""

    def __init__(self, paths: str, fmt: str, size: int, **options: Any) -> None:
        super().__init__(paths, **options)
        self._format, self._size = fmt, size

    def _read_stream(self, file: Any, path: str) -> Iterator[pa.Table]:
        for rows, payloads in read_payloads(file, self._format, self._size):
            yield pa.table({"row": pa.array(rows, pa.int64()), "payload": pa.array(payloads, pa.binary())})


class _Score:
    """A Ray Data actor: the model loads once, in the constructor."""

    def __init__(self, config: str, model: str, version: str | None, input_format: str, output_format: str) -> None:
        self.scorer = PartitionScorer(config, model, version, input_format, output_format)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.scorer.score(batch.column("row").to_pylist(), batch.column("payload").to_pylist())


def _part(scored: Any, failed: bool, columns: list[str]) -> Any:
    def select(batch: pa.Table) -> pa.Table:
        mask = batch.column("failed") if failed else pc.invert(batch.column("failed"))
        return batch.filter(mask).select(columns)

    return scored.map_batches(select, batch_format="pyarrow")


class _LinesSink(BlockBasedFileDatasink):  # type: ignore[misc]
    """JSONL as the local engine writes it: the finished lines, one per row."""

    def write_block_to_file(self, block: BlockAccessor, file: Any) -> None:
        lines = block.to_arrow().column("line").to_pylist()
        if lines:
            file.write(("\n".join(lines) + "\n").encode())


def _save(part: Any, filesystem: Any, path: str, fmt: str) -> None:
    if fmt == "jsonl":
        part.write_datasink(_LinesSink(path, filesystem=filesystem, file_format="jsonl", mode=SaveMode.OVERWRITE))
    else:
        part.write_parquet(path, filesystem=filesystem, mode=SaveMode.OVERWRITE)
    filesystem.create_dir(path)  # Ray leaves no directory for no rows: an empty part is still a part
    with filesystem.open_output_stream(join(path, SUCCESS)):
        pass


def _clear_marker(filesystem: Any, path: str) -> None:
    """A job that fails part way must not leave an earlier run's marker behind."""
    if filesystem.get_file_info(join(path, SUCCESS)).type != pafs.FileType.NotFound:
        filesystem.delete_file(join(path, SUCCESS))
