"""Files for `hostd batch`: read input records and write result rows as JSONL, CSV or Parquet.

Reading streams (a line, a CSV row or a Parquet row group at a time), so a file of any size is read
in bounded memory. Each input record becomes ``{"row": n, "id": ..., "data": {...}}``: ``row``
counts records from 1, and an ``id`` key or column, if present, is taken out of the data and
carried to the result. A record that cannot be read (a line that is not a JSON object) becomes
``{"row": n, "id": None, "error": {...}}`` instead, so it is reported, never dropped.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from hostd.errors import HostdError, InvalidInput

FORMATS = ("jsonl", "csv", "parquet")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
              ".pq": "parquet"}
ERROR_COLUMNS = ["row", "id", "code", "message"]


def detect_format(path: Path, explicit: str | None = None) -> str:
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
        return _read_jsonl(path)
    if fmt == "csv":
        return _read_csv(path)
    return _read_parquet(path)


def record(row: int, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        return failure(row, InvalidInput(f"row {row} is not an object (a JSON object per line, or a CSV/Parquet row)"))
    data = dict(data)
    row_id = data.pop("id", None)
    return {"row": row, "id": None if row_id == "" else row_id, "data": data}


def failure(row: int, exc: HostdError, row_id: Any = None) -> dict[str, Any]:
    return {"row": row, "id": row_id, "error": {"code": exc.code.value, "message": exc.message}}


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as lines:
        row = 0
        for line in lines:
            if not line.strip():
                continue  # blank lines are not records
            row += 1
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield failure(row, InvalidInput(f"row {row} is not valid JSON: {exc}"))
                continue
            yield record(row, data)


def _read_csv(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(newline="") as handle:
        for row, data in enumerate(csv.DictReader(handle), start=1):
            if None in data:  # DictReader files surplus cells under None
                yield failure(row, InvalidInput(f"row {row} has more cells than the header has columns"))
                continue
            yield record(row, {key: _cell(value) for key, value in data.items()})


def _cell(value: str | None) -> Any:
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
        for data in batch.to_pylist():
            row += 1
            yield record(row, data)


class Writer(Protocol):
    def write(self, row: dict[str, Any]) -> None: ...

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

    def close(self) -> None:
        self._file.close()


class CsvWriter:
    def __init__(self, path: Path, columns: list[str]) -> None:
        self._file = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore")
        self._writer.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({key: _flat(value) for key, value in row.items()})

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

    def _flush(self) -> None:
        table = self._pa.Table.from_pylist(self._rows) if self._rows else self._pa.table(
            {column: self._pa.array([], self._pa.string()) for column in self._columns})
        if self._writer is None:
            self._writer = self._pq.ParquetWriter(self._path, table.schema)
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
