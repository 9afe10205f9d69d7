"""Files for `hostd batch`: read input records and write result rows as JSONL, CSV or Parquet.

Reading streams (a chunk of lines, a CSV row or a Parquet row group at a time), so a file of any
size is read in bounded memory. Each input record becomes ``{"row": n, "id": ..., "data": {...}}``: ``row``
counts records from 1, and an ``id`` key or column, if present, is taken out of the data and
carried to the result. A record that cannot be read (a line that is not a JSON object) becomes
``{"row": n, "id": None, "error": {...}}`` instead, so it is reported, never dropped.
"""

from __future__ import annotations

import base64
import csv
import io
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import IO, Any, Protocol, TypeVar

import orjson

from hostd.errors import HostdError, InvalidInput

FORMATS = ("jsonl", "csv", "parquet")
CSV_CELL_CHARS = 16 << 20  # Python's csv stops at 128 KB a cell; a long text or a big image as JSON is more
csv.field_size_limit(CSV_CELL_CHARS)
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
              ".pq": "parquet"}
ERROR_COLUMNS = ["row", "id", "code", "message"]

T = TypeVar("T")


def detect_format(path: PurePath, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise ValueError(f"cannot tell the format of {path} from its extension; use --format "
                         f"({', '.join(FORMATS)})")
    return EXTENSIONS[suffix]


def read_records(path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    """Every record of ``path`` in order, as ``{"row", "id", "data"}`` (or ``"error"``)."""
    if fmt == "jsonl":
        return itertools.chain.from_iterable(read_chunks(path, fmt, 1024))
    if fmt == "csv":
        return _read_csv(path)
    return _read_parquet(path)


def read_chunks(path: Path, fmt: str, size: int) -> Iterator[list[dict[str, Any]]]:
    """The records of ``path`` in order, in lists of at most ``size``."""
    return map(parsed, read_unparsed(path, fmt, size))


@dataclass(frozen=True)
class Lines:
    """JSONL lines not parsed yet, the first of them row ``first_row``: what a parent process hands
    to a worker (pickling bytes costs ~10x less than pickling the records they make)."""

    first_row: int
    lines: list[bytes]


def read_unparsed(path: Path, fmt: str, size: int) -> Iterator[Lines | list[dict[str, Any]]]:
    """``read_chunks``, but a JSONL file's chunks come as ``Lines`` for ``parsed`` to parse later."""
    if fmt == "jsonl":
        return _jsonl_lines(path, size)
    return chunks(read_records(path, fmt), size)


def parsed(chunk: Lines | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return _jsonl_records(chunk.lines, chunk.first_row) if isinstance(chunk, Lines) else chunk


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    items = iter(items)
    while chunk := list(itertools.islice(items, size)):  # the per-item loop runs in C
        yield chunk


def record(row: int, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        return failure(row, InvalidInput(f"row {row} is not an object (a JSON object per line, or a CSV/Parquet row)"))
    if "id" not in data:  # most records: no copy
        return {"row": row, "id": None, "data": data}
    data = dict(data)  # the caller's dict keeps its id
    row_id = data.pop("id")
    return {"row": row, "id": None if row_id == "" else row_id, "data": data}


def failure(row: int, exc: HostdError, row_id: Any = None) -> dict[str, Any]:
    return {"row": row, "id": row_id, "error": {"code": exc.code.value, "message": exc.message}}


def _jsonl_lines(path: Path, size: int) -> Iterator[Lines]:
    with path.open("rb") as file:
        yield from jsonl_lines(file, size)


def jsonl_lines(file: Iterable[bytes], size: int) -> Iterator[Lines]:
    """The lines of an open JSONL file, ``size`` at a time less the blank ones, numbered from 1."""
    row = 1
    for block in chunks(file, size):
        lines = [line for line in block if not line.isspace()]  # blank lines are no records
        if lines:
            yield Lines(row, lines)
            row += len(lines)


def _jsonl_records(lines: list[bytes], first_row: int) -> list[dict[str, Any]]:
    # Comprehensions over the chunk (~15% faster than a generator yielding a record at a time);
    # line by line, to say which line is not JSON, only in a chunk where one is not.
    try:
        values = [orjson.loads(line) for line in lines]
    except orjson.JSONDecodeError:
        return [_jsonl_record(row, line) for row, line in enumerate(lines, start=first_row)]
    return [record(row, value) for row, value in enumerate(values, start=first_row)]


def _jsonl_record(row: int, line: bytes) -> dict[str, Any]:
    try:
        return record(row, orjson.loads(line))
    except orjson.JSONDecodeError as exc:
        return failure(row, InvalidInput(f"row {row} is not valid JSON: {exc}"))


def _read_csv(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as handle:
        for row, data in csv_rows(handle):
            if isinstance(data, str):
                yield failure(row, InvalidInput(data))
            else:
                yield record(row, {key: cell(value) for key, value in data.items()})


def csv_rows(file: IO[bytes]) -> Iterator[tuple[int, dict[str, str] | str]]:
    """Each CSV record of ``file``, numbered from 1: its cells by column, or why it cannot be read (more
    cells than the header has columns, a cell over CSV_CELL_CHARS, text that is not UTF-8). A byte order
    mark is not part of the first column's name (Excel writes one)."""
    # surrogateescape: a byte that is not UTF-8 fails its own row (below), not the whole file.
    text = io.TextIOWrapper(file, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        yield from _csv_rows(csv.DictReader(text))
    finally:
        text.detach()  # ``file`` stays its opener's to close


def _csv_rows(reader: csv.DictReader[str]) -> Iterator[tuple[int, dict[str, str] | str]]:
    row = 0
    while True:
        try:
            data = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a cell over the limit, a NUL byte: this record only
            row += 1
            yield row, f"row {row} cannot be read as CSV: {exc}"
            continue
        row += 1
        if None in data:  # DictReader files surplus cells under None
            yield row, f"row {row} has more cells than the header has columns"
        elif not all(_utf8(key) and _utf8(value) for key, value in data.items()):
            yield row, f"row {row} is not UTF-8 text"
        else:
            yield row, data


def _utf8(text: str | None) -> bool:
    """``text`` was decoded from UTF-8 without an escaped byte (see csv_rows)."""
    if text is None or text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def cell(value: str | None) -> Any:
    # CSV has only strings: pydantic turns "5.1" into 5.1 itself; lists and objects (an 8x8 image)
    # are written as JSON in their cell.
    if value and value[0] in "[{":
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _read_parquet(path: Path) -> Iterator[dict[str, Any]]:
    pq = _pyarrow_parquet()
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for data in json_ready(batch).to_pylist():
            row += 1
            yield record(row, data)


def json_ready(batch: Any) -> Any:
    """An Arrow record batch whose values JSON can carry, as every engine hands them to the model: decimal
    columns as float64, binary as text (base64 for a column with a value that is not UTF-8), durations as
    float seconds. Cast a column at a time in Arrow: nothing is done per value."""
    pa, pc = _pyarrow(), __import__("pyarrow.compute").compute
    columns = []
    for column in batch.columns:
        kind = column.type
        if pa.types.is_decimal(kind):
            column = column.cast(pa.float64())
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
            column = _text(pa, column)
        elif pa.types.is_duration(kind):
            per_second = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[kind.unit]
            column = pc.divide(column.cast(pa.int64()).cast(pa.float64()), per_second)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _text(pa: Any, column: Any) -> Any:
    binary = column.cast(pa.binary())
    try:
        return binary.cast(pa.string())  # checks that every value is UTF-8
    except pa.ArrowInvalid:
        return pa.array([None if value is None else base64.b64encode(value).decode() for value in binary.to_pylist()])


class Writer(Protocol):
    def write(self, row: dict[str, Any]) -> None: ...

    def write_many(self, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


def open_writer(path: Path, fmt: str, columns: list[str]) -> Writer:
    """A writer of rows with ``columns`` (CSV and Parquet; JSONL writes each row as it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        return JsonlWriter(path)
    if fmt == "csv":
        return CsvWriter(path, columns)
    return ParquetWriter(path, columns)


class JsonlWriter:
    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))

    def write_many(self, rows: list[dict[str, Any]]) -> None:
        # A line at a time, not one b"".join: orjson gives each result a 1 KiB buffer before trimming
        # it, and holding a chunk's worth of them at once made each dumps ~10x slower (malloc).
        write, dumps, newline = self._file.write, orjson.dumps, orjson.OPT_APPEND_NEWLINE
        for row in rows:
            write(dumps(row, option=newline))

    def close(self) -> None:
        self._file.close()


class CsvWriter:
    def __init__(self, path: Path, columns: list[str]) -> None:
        self._file = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore")
        self._writer.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({key: _flat(value) for key, value in row.items()})

    def write_many(self, rows: list[dict[str, Any]]) -> None:
        self._writer.writerows([{key: _flat(value) for key, value in row.items()} for row in rows])

    def close(self) -> None:
        self._file.close()


def _flat(value: Any) -> Any:
    return orjson.dumps(value).decode() if isinstance(value, (dict, list)) else value


class ParquetWriter:
    """Buffers rows and writes a row group per 8,192 rows (the schema comes from the first group;
    ``id`` is always a string column)."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self._pa, self._pq = _pyarrow(), _pyarrow_parquet()
        self._path, self._columns = path, columns
        self._rows: list[dict[str, Any]] = []
        self._writer: Any = None

    def write(self, row: dict[str, Any]) -> None:
        row = {key: _flat(value) for key, value in row.items()}
        if row.get("id") is not None:
            row["id"] = str(row["id"])  # ids may mix strings and row numbers: one string column
        self._rows.append(row)
        if len(self._rows) >= 8192:
            self._flush()

    def write_many(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.write(row)

    def _flush(self) -> None:
        table = self._pa.Table.from_pylist(self._rows) if self._rows else self._pa.table(
            {column: self._pa.array([], self._pa.string()) for column in self._columns})
        if self._writer is None:
            # A column with no value in the first group (no row had an id yet) would be typed null, and a
            # later group's values could not be written to it: such a column is a string column.
            schema = self._pa.schema([field.with_type(self._pa.string()) if self._pa.types.is_null(field.type)
                                      else field for field in table.schema])
            self._writer = self._pq.ParquetWriter(self._path, schema)
        self._writer.write_table(table.cast(self._writer.schema))
        self._rows = []

    def close(self) -> None:
        if self._rows or self._writer is None:
            self._flush()
        self._writer.close()


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise ValueError("Parquet needs pyarrow: pip install pyarrow (hostd[beam] brings it)") from None
    return pyarrow


def _pyarrow_parquet() -> Any:
    _pyarrow()
    import pyarrow.parquet

    return pyarrow.parquet
