"""hostd.partitions: what the workers of spark, ray, beam and mapreduce share. A partition scored there
must give exactly the rows, row numbers and lines the local engine gives for the same input."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hostd import recordfiles
from hostd.offline import BatchEngine, BatchJob, Scorer, run_job
from hostd.partitions import PartitionScorer, join, path_of, read_payloads, records, shown, sibling

ROOT = Path(__file__).resolve().parents[1]
JSONL = (b'{"x": 1}\n\n{broken\n{"id": "k", "x": 2}\n   \t\n[1]\n{"x": "nope"}\n'
         b'{"id": 9, "x": 3, "fail": true}\n{"x": 4}\n')


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "host.yaml"
    path.write_text("models:\n  - {class_path: 'tests.support.toy:EchoModel'}\n")
    return path


def local_records(path: Path, fmt: str) -> list[dict[str, object]]:
    return list(recordfiles.read_records(path, fmt))


def payload_records(path: Path, fmt: str, size: int) -> list[dict[str, object]]:
    with path.open("rb") as file:
        return [item for rows, payloads in read_payloads(file, fmt, size) for item in records(rows, payloads, fmt)]


@pytest.mark.parametrize("size", [1, 2, 3, 1024])
def test_jsonl_payloads_make_the_local_engines_records_whatever_the_chunk(tmp_path: Path, size: int) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(JSONL)
    assert payload_records(path, "jsonl", size) == local_records(path, "jsonl")
    with path.open("rb") as file:
        # 3 lines a chunk, less the blank ones
        assert [rows for rows, _ in read_payloads(file, "jsonl", 3)] == [[1, 2], [3, 4], [5, 6, 7]]


def test_a_partition_in_any_order_keeps_each_lines_row_number() -> None:
    lines = [b'{"x": 1}', b"{broken", b'{"id": "k", "x": 2}']
    shuffled = records([12, 10, 11], [lines[2], lines[0], lines[1]], "jsonl")
    assert [(item["row"], "error" in item) for item in shuffled] == [(12, False), (10, False), (11, True)]
    assert shuffled[0] == {"row": 12, "id": "k", "data": {"x": 2}}
    assert "row 11 is not valid JSON" in shuffled[2]["error"]["message"]


def test_csv_payloads_read_cells_as_the_local_engine_does(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('id,x,image\na,1.5,"[[1, 2], [3, 4]]"\n,2,\nb,3,x,surplus\n')
    assert payload_records(path, "csv", 2) == local_records(path, "csv")
    assert "more cells than the header" in payload_records(path, "csv", 2)[2]["error"]["message"]


def test_a_csv_row_that_cannot_be_read_fails_alone_on_every_reader(tmp_path: Path) -> None:
    """Excel's byte order mark, a cell over Python's 128 KB default, a byte that is not UTF-8: the local
    engine printed a traceback for the last two, and every row failed for the first."""
    path = tmp_path / "in.csv"
    big = "y" * 200_000
    path.write_bytes(b"\xef\xbb\xbfid,x,text\n" + b"a,1,ok\n" + f"b,2,{big}\n".encode() + b"c,3,caf\xe9\n"
                     + b"d,4,fine\n")
    local = local_records(path, "csv")
    assert payload_records(path, "csv", 2) == local
    assert [(item["row"], item["id"]) for item in local if "error" not in item] == [(1, "a"), (2, "b"), (4, "d")]
    assert local[1]["data"] == {"x": "2", "text": big}
    assert local[2]["error"]["message"] == "row 3 is not UTF-8 text"


def test_parquet_values_json_cannot_carry_reach_every_engine_the_same(tmp_path: Path) -> None:
    """Decimal, binary and duration columns: the payload engines (JSON text) failed the whole job on them."""
    from datetime import timedelta
    from decimal import Decimal
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({
        "id": pa.array([b"a", b"b"], pa.binary()),
        "x": pa.array([Decimal("1.25"), None], pa.decimal128(5, 2)),
        "blob": pa.array([b"\xff\x00", b"ok"], pa.binary()),
        "wait": pa.array([timedelta(milliseconds=1500), timedelta(0)], pa.duration("ms")),
    }), path)
    local = local_records(path, "parquet")
    assert payload_records(path, "parquet", 1) == local
    assert local == [{"row": 1, "id": "a", "data": {"x": 1.25, "blob": "/wA=", "wait": 1.5}},
                     {"row": 2, "id": "b", "data": {"x": None, "blob": "b2s=", "wait": 0.0}}]


def test_a_parquet_file_whose_first_group_has_no_ids_takes_later_ones(tmp_path: Path) -> None:
    writer = recordfiles.open_writer(tmp_path / "errors.parquet", "parquet", ["row", "id", "code"])
    writer.write_many([{"row": row, "id": None, "code": "INVALID_INPUT"} for row in range(1, 8193)])
    writer.write_many([{"row": 8193, "id": "late", "code": "INVALID_INPUT"}])
    writer.close()
    ids = pq.read_table(tmp_path / "errors.parquet").column("id").to_pylist()
    assert (len(ids), ids[0], ids[-1]) == (8193, None, "late")


def test_csv_rows_from_another_reader_are_decoded_the_same(tmp_path: Path) -> None:
    """Spark's own CSV reader hands over each row as a JSON object of strings (nulls for empty cells)."""
    made = records([1, 2], [b'{"id": "a", "x": "1.5", "image": "[[1, 2]]"}', b'{"id": null, "x": "2"}'], "csv")
    assert made == [{"row": 1, "id": "a", "data": {"x": "1.5", "image": [[1, 2]]}},
                    {"row": 2, "id": None, "data": {"x": "2"}}]


def test_parquet_payloads_read_rows_as_the_local_engine_does(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "x": 1.0}, {"id": None, "x": 2.5}, {"id": "c", "x": None}]), path)
    assert payload_records(path, "parquet", 2) == local_records(path, "parquet")


def test_a_file_that_reads_only_bytes_is_read_in_lines() -> None:
    class OnlyRead:  # pyarrow's input streams (Ray's filesystem layer) have read(n), not readline
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self._data.read(size)

    found = [rows for rows, _ in read_payloads(OnlyRead(JSONL), "jsonl", 1024)]  # type: ignore[arg-type]
    assert found == [[1, 2, 3, 4, 5, 6, 7]]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_scored_partition_holds_what_the_local_engine_writes(config: Path, tmp_path: Path, fmt: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(JSONL)
    local = BatchJob(config, "echo", None, str(source), str(tmp_path / f"out.{fmt}"),
                     str(tmp_path / f"out.errors.{fmt}"), "jsonl", fmt)
    scorer = Scorer.load(config, "echo")
    run_job(local, BatchEngine("here", lambda job: (r for chunk in recordfiles.read_chunks(source, "jsonl", 4)
                                                    for r in scorer.score(chunk))),
            scorer.output_columns(), progress=False)

    partition = PartitionScorer(str(config), "echo", None, "jsonl", fmt)
    with source.open("rb") as file:
        tables = [partition.score(rows, payloads) for rows, payloads in read_payloads(file, "jsonl", 4)]
    scored = pa.concat_tables(tables)
    assert scored.schema == partition.schema
    predictions = scored.filter(pa.compute.invert(scored["failed"])).select(partition.prediction_columns)
    errors = scored.filter(scored["failed"]).select(partition.error_columns)
    if fmt == "jsonl":
        assert predictions["line"].to_pylist() == (tmp_path / "out.jsonl").read_text().splitlines()
        assert errors["line"].to_pylist() == (tmp_path / "out.errors.jsonl").read_text().splitlines()
        assert [orjson.loads(line)["id"] for line in predictions["line"].to_pylist()] == [1, "k", 7]
    else:
        assert predictions.to_pylist() == pq.read_table(tmp_path / "out.parquet").to_pylist()
        assert errors.to_pylist() == pq.read_table(tmp_path / "out.errors.parquet").to_pylist()
        assert predictions.schema.field("id").type == pa.string()  # ids may mix strings and row numbers


def test_the_scored_schema_is_known_before_any_row_is_scored() -> None:
    partition = PartitionScorer(str(ROOT / "host.yaml"), "digits_model", None, "jsonl", "parquet")
    assert partition.prediction_columns == ["id", "digit", "probability"]
    assert {name: str(partition.schema.field(name).type) for name in partition.prediction_columns} == {
        "id": "string", "digit": "int64", "probability": "double"}
    iris = PartitionScorer(str(ROOT / "host.yaml"), "iris_model", None, "jsonl", "parquet")
    assert str(iris.schema.field("species").type) == "string"  # an enum of strings
    assert str(PartitionScorer(str(ROOT / "host.yaml"), "iris_model", None, "csv", "jsonl").schema) == \
        "failed: bool\nline: string"


def test_csv_is_no_output_of_these_engines(config: Path) -> None:
    with pytest.raises(ValueError, match="jsonl or parquet, not csv"):
        PartitionScorer(str(config), "echo", None, "jsonl", "csv")


def test_locations_keep_a_urls_query_last_and_never_show_its_credentials() -> None:
    url = "s3://key:secret@bucket/ray/out.jsonl?endpoint_override=127.0.0.1:9000&scheme=http"
    assert join(url, "_SUCCESS") == "s3://key:secret@bucket/ray/out.jsonl/_SUCCESS?endpoint_override=127.0.0.1:9000&scheme=http"
    assert sibling(url, ".errors") == "s3://key:secret@bucket/ray/out.errors.jsonl?endpoint_override=127.0.0.1:9000&scheme=http"
    assert path_of(url) == "/ray/out.jsonl"  # what the format is told by
    assert shown(join(url, "_SUCCESS")) == "s3://***@bucket/ray/out.jsonl/_SUCCESS?endpoint_override=127.0.0.1:9000&scheme=http"
    assert (join("/data/out.parquet/", "_SUCCESS"), sibling("/data/out.parquet", ".errors")) == (
        "/data/out.parquet/_SUCCESS", "/data/out.errors.parquet")
    assert (shown("/data/out.jsonl"), sibling("s3a://bucket/out.jsonl/", ".errors")) == (
        "/data/out.jsonl", "s3a://bucket/out.errors.jsonl")
