"""Scoring a partition: what the workers of the engines that write their own output (spark, ray, beam,
mapreduce) call.

Such an engine runs on a cluster: it reads the input with its own readers, its workers score it, and
they write the results straight to the output location (a directory, or a URL such as ``s3://``)
through the engine's own filesystem layer. Nothing passes through the driver.

- The input reaches a worker as **payloads**: each record's row number and its JSON text (a JSONL
  line as it is, or a CSV or Parquet row encoded as an object). ``read_payloads`` makes them from a
  file object, for the engines whose own readers number no rows (Ray, Beam).
- ``PartitionScorer.score`` turns a partition of payloads into one **scored table** (Arrow), a row per
  input row: a ``failed`` flag, and either the prediction as the local engine writes it or the error
  row. For JSONL that is one ``line`` column holding the finished line; for Parquet, a column per
  output field and per error field. The engine then writes the predictions (``failed`` false, the
  ``prediction_columns``) and the errors (the ``error_columns``) with its own writers.
- A job commits by writing the ``_SUCCESS`` marker (``SUCCESS``, ``join``) last, into the predictions'
  directory, after the errors' directory is complete, each engine with its own filesystem layer; it
  removes an earlier one first, so a job that failed part way has none.
- The counts come from the engine (its metrics or counters, or an aggregation of the scored table),
  never from reading the output back on one machine.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator, Sequence
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from hostd import recordfiles
from hostd.errors import InvalidInput
from hostd.offline import Scorer

SUCCESS = "_SUCCESS"  # Hadoop's commit marker, which Spark and mrjob's Hadoop runner write too
DISTRIBUTED_FORMATS = ("jsonl", "parquet")  # what these engines write
#: A payload that stands for a record the reader could not read: {READ_ERROR: message}.
READ_ERROR = "\x00hostd_read_error"


# -- the input ------------------------------------------------------------------------------------

def read_payloads(file: IO[bytes], fmt: str, size: int) -> Iterator[tuple[list[int], list[bytes]]]:
    """The records of one file, numbered from 1 as the local engine numbers them, as lists of at
    most ``size`` (row numbers, payloads)."""
    if fmt == "parquet":
        yield from _numbered(_parquet_objects(file), size)
        return
    # Any engine's file object reads bytes; not all read lines (pyarrow's, Ray's filesystem layer).
    file = io.BufferedReader(_RawReader(file), 1 << 20)
    if fmt == "jsonl":
        for chunk in recordfiles.jsonl_lines(file, size):
            yield list(range(chunk.first_row, chunk.first_row + len(chunk.lines))), chunk.lines
        return
    yield from _numbered(_csv_objects(file), size)


def _numbered(objects: Iterator[dict[str, Any]], size: int) -> Iterator[tuple[list[int], list[bytes]]]:
    for chunk in recordfiles.chunks(enumerate(objects, start=1), size):
        yield [row for row, _ in chunk], [orjson.dumps(data) for _, data in chunk]


class _RawReader(io.RawIOBase):
    """A file that only has read(n), as a raw stream io.BufferedReader can read lines from."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._file.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _csv_objects(file: IO[bytes]) -> Iterator[dict[str, Any]]:
    for _, data in recordfiles.csv_rows(file):
        yield {READ_ERROR: data} if isinstance(data, str) else data


def _parquet_objects(file: IO[bytes]) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not (hasattr(file, "seekable") and file.seekable()):  # a stream: Parquet's footer is at the end
        file = pa.BufferReader(file.read())
    for batch in pq.ParquetFile(file).iter_batches(batch_size=4096):
        yield from recordfiles.json_ready(batch).to_pylist()


def records(rows: Sequence[int], payloads: Sequence[bytes | str], fmt: str) -> list[dict[str, Any]]:
    """The records of a partition, as ``recordfiles`` makes them for the local engine: a payload that
    is not a JSON object becomes its row's error. CSV cells are strings, as the local engine reads
    them (a cell holding a JSON list or object is decoded)."""
    if fmt == "jsonl":
        lines = [payload.encode() if isinstance(payload, str) else payload for payload in payloads]
        if rows and list(rows) == list(range(rows[0], rows[0] + len(rows))):  # as engines mostly hand them over
            return recordfiles.parsed(recordfiles.Lines(rows[0], lines))
        return [item for row, line in zip(rows, lines, strict=True)
                for item in recordfiles.parsed(recordfiles.Lines(row, [line]))]
    made = []
    for row, payload in zip(rows, payloads, strict=True):
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            made.append(recordfiles.failure(row, InvalidInput(f"row {row} is not valid JSON: {exc}")))
            continue
        if isinstance(data, dict) and READ_ERROR in data:
            made.append(recordfiles.failure(row, InvalidInput(str(data[READ_ERROR]))))
            continue
        if fmt == "csv" and isinstance(data, dict):
            data = {key: recordfiles.cell(value) if isinstance(value, str) else value for key, value in data.items()}
        made.append(recordfiles.record(row, data))
    return made


# -- the output -----------------------------------------------------------------------------------

class PartitionScorer:
    """The model on one worker (loaded once, as ``Scorer.load`` loads it for the local engine),
    scoring partitions of payloads into scored tables."""

    def __init__(self, config: str, model: str, version: str | None, input_format: str,
                 output_format: str) -> None:
        if output_format not in DISTRIBUTED_FORMATS:
            raise ValueError(f"these engines write {' or '.join(DISTRIBUTED_FORMATS)}, not {output_format}")
        self.scorer = Scorer.load(config, model, version)
        self.input_format, self.output_format = input_format, output_format
        self.schema = scored_schema(self.scorer, output_format)

    def score(self, rows: Sequence[int], payloads: Sequence[bytes | str]) -> Any:
        """The scored table (a ``pyarrow.Table`` with ``self.schema``) of one partition."""
        import pyarrow as pa

        results = self.scorer.score(records(rows, payloads, self.input_format)) if rows else []
        if self.output_format == "jsonl":
            failed = ["error" in result for result in results]
            lines = [orjson.dumps(error_row(r) if bad else prediction_row(r, nested=True)).decode()
                     for r, bad in zip(results, failed, strict=True)]
            return pa.table({"failed": pa.array(failed, pa.bool_()), "line": pa.array(lines, pa.string())},
                            schema=self.schema)
        flat = [{"failed": True, **error_row(r)} if "error" in r else
                {"failed": False, **_flat_values(prediction_row(r, nested=False))} for r in results]
        for row in flat:
            if row["id"] is not None:
                row["id"] = str(row["id"])  # as the local engine's Parquet: ids may mix strings and row numbers
        return pa.Table.from_pylist(flat, schema=self.schema)

    def score_batches(self, batches: Iterator[Any]) -> Iterator[Any]:
        """Scored record batches for Arrow batches of ``row`` and ``payload`` (Spark's mapInArrow)."""
        for batch in batches:
            scored = self.score(batch.column("row").to_pylist(), batch.column("payload").to_pylist())
            yield from scored.to_batches()

    @property
    def prediction_columns(self) -> list[str]:
        return ["line"] if self.output_format == "jsonl" else self.scorer.output_columns()

    @property
    def error_columns(self) -> list[str]:
        return ["line"] if self.output_format == "jsonl" else list(recordfiles.ERROR_COLUMNS)


def prediction_row(result: dict[str, Any], nested: bool) -> dict[str, Any]:
    # The id column holds the record's id, or its row number when it has none (as run_job writes it).
    row_id = result["id"] if result["id"] is not None else result["row"]
    return {"id": row_id, "prediction": result["prediction"]} if nested else {"id": row_id, **result["prediction"]}


def error_row(result: dict[str, Any]) -> dict[str, Any]:
    return {"row": result["row"], "id": result["id"], **result["error"]}


def _flat_values(row: dict[str, Any]) -> dict[str, Any]:
    # A list or object goes into its Parquet cell as JSON text, as the local engine writes it.
    return {key: orjson.dumps(value).decode() if isinstance(value, (dict, list)) else value
            for key, value in row.items()}


def scored_schema(scorer: Scorer, output_format: str) -> Any:
    """The Arrow schema of a scored table: known before any row is scored, as Spark needs it."""
    import pyarrow as pa

    if output_format == "jsonl":
        return pa.schema([("failed", pa.bool_()), ("line", pa.string())])
    schema = scorer.served.model.output_schema.model_json_schema()
    definitions = schema.get("$defs", {})
    fields = [pa.field(name, _arrow_type(spec, definitions)) for name, spec in schema.get("properties", {}).items()]
    errors = [pa.field("row", pa.int64()), pa.field("id", pa.string()), pa.field("code", pa.string()),
              pa.field("message", pa.string())]
    return pa.schema([pa.field("failed", pa.bool_()), *errors,
                      *(field for field in fields if field.name not in {"row", "id", "code", "message"})])


_ARROW_TYPES = {"number": "float64", "integer": "int64", "string": "string", "boolean": "bool_"}


def _arrow_type(spec: dict[str, Any], definitions: dict[str, Any]) -> Any:
    """A JSON-schema field's Arrow type: a scalar as itself, an optional scalar as that (nullable),
    anything else as JSON text (as the local engine writes a list or object into a Parquet cell)."""
    import pyarrow as pa

    if "$ref" in spec:
        spec = definitions.get(spec["$ref"].rsplit("/", 1)[-1], {})
    options = [option for option in spec.get("anyOf", [spec]) if option.get("type") != "null"]
    if len(options) == 1 and options[0] is not spec:
        return _arrow_type(options[0], definitions)
    kind = spec.get("type")
    return getattr(pa, _ARROW_TYPES[kind])() if isinstance(kind, str) and kind in _ARROW_TYPES else pa.string()


# -- the commit -----------------------------------------------------------------------------------

def join(location: str, name: str) -> str:
    """``name`` inside the directory ``location`` (a path, or a URL, whose query string stays last)."""
    url = urlsplit(location)
    if url.scheme and url.query:
        return urlunsplit(url._replace(path=f"{url.path.rstrip('/')}/{name}"))
    return f"{location.rstrip('/')}/{name}"


def sibling(location: str, infix: str) -> str:
    """``location`` with ``infix`` before its extension: out.jsonl -> out.errors.jsonl (in a URL's path)."""
    url = urlsplit(location)
    path = url.path if url.scheme else location
    stem, extension = posixpath.splitext(path.rstrip("/"))
    named = f"{stem}{infix}{extension}"
    return urlunsplit(url._replace(path=named)) if url.scheme else named


def path_of(location: str) -> str:
    """The path of a location: a URL's without its scheme, host and query (to tell its format by)."""
    return urlsplit(location).path if "://" in location else location


def shown(location: str) -> str:
    """A location as it may be printed: a URL's credentials (s3://key:secret@bucket/...) left out."""
    url = urlsplit(location)
    if url.scheme and "@" in url.netloc:
        return urlunsplit(url._replace(netloc="***@" + url.netloc.rsplit("@", 1)[1]))
    return location
