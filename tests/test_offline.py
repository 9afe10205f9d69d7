"""hostd.offline and hostd.recordfiles in-process: the Scorer every engine calls, and the file formats."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostd import recordfiles
from hostd.errors import ModelNotFound
from hostd.offline import BatchEngine, BatchJob, Scorer, run_job


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "host.yaml"
    path.write_text("models:\n"
                    "  - {class_path: 'tests.support.toy:EchoModel'}\n"
                    "  - {class_path: 'tests.support.toy:EchoModel', configuration: {version: '2.0.0', factor: 3}}\n")
    return path


def records(*data: object) -> list[dict[str, object]]:
    return [recordfiles.record(row, item) for row, item in enumerate(data, start=1)]


def test_a_row_that_makes_the_model_raise_fails_alone_and_the_rest_are_scored(config: Path) -> None:
    scorer = Scorer.load(config, "echo", "1.0.0")
    results = scorer.score(records({"x": 1}, {"x": 2, "fail": True}, {"id": "c", "x": 3}))
    assert results[0] == {"row": 1, "id": None, "prediction": {"y": 2.0, "text": ""}}
    assert results[1]["error"]["code"] == "MODEL_ERROR" and "asked to fail" in results[1]["error"]["message"]
    assert results[2] == {"row": 3, "id": "c", "prediction": {"y": 6.0, "text": ""}}


def test_invalid_rows_are_reported_with_their_row_and_id(config: Path) -> None:
    results = Scorer.load(config, "echo").score(records({"id": 7, "x": "nope"}, [1, 2], {"x": 1}))
    assert [r.get("error", {}).get("code") for r in results] == ["INVALID_INPUT", "INVALID_INPUT", None]
    assert results[0]["row"] == 1 and results[0]["id"] == 7 and "x" in results[0]["error"]["message"]
    assert "not an object" in results[1]["error"]["message"]


def test_the_latest_version_is_used_unless_one_is_named(config: Path) -> None:
    assert Scorer.load(config, "echo").score(records({"x": 1}))[0]["prediction"]["y"] == 3.0
    assert Scorer.load(config, "echo", "1.0.0").score(records({"x": 1}))[0]["prediction"]["y"] == 2.0


def test_an_unknown_model_names_what_the_config_has(config: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"echo 1\.0\.0, echo 2\.0\.0"):
        Scorer.load(config, "iris")
    with pytest.raises(ModelNotFound, match="version '9'"):
        Scorer.load(config, "echo", "9")


def test_jsonl_lines_that_are_not_objects_become_error_records(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"x": 1}\n\n{broken\n[1]\n{"id": "k", "x": 2}\n')
    read = list(recordfiles.read_records(path, "jsonl"))
    assert [item["row"] for item in read] == [1, 2, 3, 4]  # the blank line is not a record
    assert "error" in read[1] and "not valid JSON" in read[1]["error"]["message"]
    assert "error" in read[2]
    assert read[3] == {"row": 4, "id": "k", "data": {"x": 2}}


def test_jsonl_chunks_number_rows_across_chunks_as_records_do(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"x": 1}\n\n{broken\n{"id": "k", "x": 2}\n\n\n[1]\n{"x": 3}\n')
    chunked = list(recordfiles.read_chunks(path, "jsonl", 2))
    assert [len(chunk) for chunk in chunked] == [1, 2, 2]  # chunks of 2 lines, less the blank ones
    flat = [item for chunk in chunked for item in chunk]
    assert flat == list(recordfiles.read_records(path, "jsonl"))
    assert [item["row"] for item in flat] == [1, 2, 3, 4, 5]
    assert "not valid JSON" in flat[1]["error"]["message"] and "not an object" in flat[3]["error"]["message"]
    unparsed = list(recordfiles.read_unparsed(path, "jsonl", 2))  # what --workers hands its processes
    assert [item for chunk in unparsed for item in recordfiles.parsed(chunk)] == flat


def test_a_record_takes_the_id_out_of_a_copy_of_the_data() -> None:
    data = {"id": "a", "x": 1}
    assert recordfiles.record(3, data) == {"row": 3, "id": "a", "data": {"x": 1}}
    assert data == {"id": "a", "x": 1}


def test_run_job_writes_the_same_files_from_results_one_at_a_time_or_in_chunks(config: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"x": 1}\n{"x": "bad"}\n{"id": "c", "x": 3, "fail": true}\nnope\n{"x": 4}\n')
    scorer = Scorer.load(config, "echo", "1.0.0")

    def chunked(job: BatchJob) -> Iterator[list[dict[str, Any]]]:
        return (scorer.score(chunk) for chunk in recordfiles.read_chunks(Path(job.input), job.input_format, 2))

    def flat(job: BatchJob) -> Iterator[dict[str, Any]]:
        return (result for chunk in chunked(job) for result in chunk)

    thresholds = gc.get_threshold()
    for engine in (BatchEngine("flat", flat), BatchEngine("chunked", flat, run_chunks=chunked)):
        job = BatchJob(config, "echo", "1.0.0", str(source), str(tmp_path / f"{engine.name}.jsonl"),
                       str(tmp_path / f"{engine.name}.errors.jsonl"), "jsonl", "jsonl", chunk_size=2)
        summary = run_job(job, engine, scorer.output_columns(), progress=False)
        assert (summary.rows_in, summary.predicted, summary.failed) == (5, 2, 3)
    assert (tmp_path / "flat.jsonl").read_bytes() == (tmp_path / "chunked.jsonl").read_bytes()
    assert (tmp_path / "flat.errors.jsonl").read_bytes() == (tmp_path / "chunked.errors.jsonl").read_bytes()
    assert (tmp_path / "flat.jsonl").read_text().splitlines() == [
        '{"id":1,"prediction":{"y":2.0,"text":""}}', '{"id":5,"prediction":{"y":8.0,"text":""}}']
    assert [line.split(",")[:2] for line in (tmp_path / "flat.errors.jsonl").read_text().splitlines()] == [
        ['{"row":2', '"id":null'], ['{"row":3', '"id":"c"'], ['{"row":4', '"id":null']]
    assert gc.get_threshold() == thresholds  # run_job collects less only while it runs


def test_a_scorers_event_loop_closes_with_it(config: Path) -> None:
    scorer = Scorer.load(config, "echo")
    scorer.score(records({"x": 1}))
    loop = scorer._loop
    assert loop is not None and not loop.is_closed()
    del scorer
    assert loop.is_closed()


def test_csv_cells_holding_json_are_decoded(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('id,x,image\na,1.5,"[[1, 2], [3, 4]]"\n')
    (item,) = recordfiles.read_records(path, "csv")
    assert item == {"row": 1, "id": "a", "data": {"x": "1.5", "image": [[1, 2], [3, 4]]}}


def test_parquet_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (hostd[beam] brings it)")
    path = tmp_path / "out.parquet"
    writer = recordfiles.open_writer(path, "parquet", ["id", "y"])
    for i in range(3):
        writer.write({"id": i, "y": i * 2.0})
    writer.close()
    assert [item["data"] for item in recordfiles.read_records(path, "parquet")] == [{"y": 0.0}, {"y": 2.0}, {"y": 4.0}]


def test_the_format_comes_from_the_extension_or_is_asked_for() -> None:
    assert recordfiles.detect_format(Path("a.ndjson")) == "jsonl"
    assert recordfiles.detect_format(Path("a.txt"), "csv") == "csv"
    with pytest.raises(ValueError, match="--format"):
        recordfiles.detect_format(Path("a.txt"))


def test_a_models_own_input_check_is_invalid_input_and_other_failures_model_error(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text("models:\n  - {class_path: 'tests.support.toy_extra:StrictEcho'}\n")
    results = Scorer.load(path, "echo").score(records({"x": -1}, {"x": 1, "fail": True}, {"x": 2}))
    assert [r.get("error", {}).get("code") for r in results] == ["INVALID_INPUT", "MODEL_ERROR", None]
    assert "x must not be negative" in results[0]["error"]["message"]
