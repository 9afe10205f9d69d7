"""`hostd batch` on the local engine, run as a user runs it: real models, real files, bad rows included."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.batch.helpers import (
    HOSTD,
    INVALID,
    MODEL_ERROR,
    MODELS,
    OUTPUT_COLUMNS,
    ROOT,
    Case,
    Run,
    batch,
    by_input,
    check_outputs,
    check_predictions,
    errors_path,
    header,
    make_case,
    read_rows,
)

COUNT = {"iris_model": 3000, "digits_model": 2000, "diabetes_model": 2000}
DETERMINISTIC = ("iris_model", "digits_model")

Reference = tuple[Case, Path, Run]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Reference]:
    """``reference(model)``: a few thousand rows with bad ones, JSONL in and out with the defaults,
    run once per module and shared by the tests that check it or compare against it."""
    runs: dict[str, Reference] = {}

    def get(model: str) -> Reference:
        if model not in runs:
            folder = tmp_path_factory.mktemp(model)
            case = make_case(model, COUNT[model])
            source = case.write_jsonl(folder / "in.jsonl")
            runs[model] = case, folder / "out.jsonl", batch(model, source, folder / "out.jsonl")
        return runs[model]

    return get


# -- one run per model: counts, rows, order, codes -------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_summary_counts_rows_and_exit_code_is_1_when_rows_fail(reference: Callable[[str], Reference],
                                                                model: str) -> None:
    case, output, run = reference(model)
    expected = case.expected()
    assert run.returncode == 1, run.stderr
    assert run.summary() == (expected.rows, len(expected.ids), len(expected.errors), "local")
    assert f"hostd batch: failed rows are in {errors_path(output)}" in run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout == ""


@pytest.mark.parametrize("model", MODELS)
def test_every_row_is_predicted_in_input_order_or_reported_with_its_row_and_code(
        reference: Callable[[str], Reference], model: str) -> None:
    case, output, _ = reference(model)
    outputs, _ = check_outputs(case, output)
    assert all(set(row) == {"id", "prediction"} for row in outputs)
    # Rows without an id are known by their row number.
    assert any(isinstance(row["id"], int) for row in outputs)


@pytest.mark.parametrize("model", MODELS)
def test_predictions_are_the_models(reference: Callable[[str], Reference], model: str) -> None:
    case, output, _ = reference(model)
    check_predictions(case, read_rows(output))


def test_allow_errors_exits_0_and_still_reports_the_failures(tmp_path: Path) -> None:
    case = make_case("iris_model", 300)
    run = batch("iris_model", case.write_jsonl(tmp_path / "in.jsonl"), tmp_path / "out.jsonl", "--allow-errors")
    assert run.returncode == 0, run.stderr
    assert run.summary()[2] == len(case.expected().errors) > 0
    assert f"failed rows are in {tmp_path / 'out.errors.jsonl'}" in run.stderr
    check_outputs(case, tmp_path / "out.jsonl")


def test_no_failures_exit_0_with_an_empty_errors_file(tmp_path: Path) -> None:
    case = make_case("iris_model", 500).only(lambda entry: entry.code is None)
    run = batch("iris_model", case.write_jsonl(tmp_path / "in.jsonl"), tmp_path / "out.jsonl")
    assert run.returncode == 0, run.stderr
    assert run.summary() == (500, 500, 0, "local")
    assert "failed rows are in" not in run.stderr
    assert (tmp_path / "out.errors.jsonl").read_text() == ""
    check_outputs(case, tmp_path / "out.jsonl")


def test_errors_option_puts_failed_rows_where_asked(tmp_path: Path) -> None:
    case = make_case("diabetes_model", 200)
    failed = tmp_path / "rejects" / "bad.jsonl"
    run = batch("diabetes_model", case.write_jsonl(tmp_path / "in.jsonl"), tmp_path / "out.jsonl",
                "--errors", failed)
    assert run.returncode == 1, run.stderr
    assert f"failed rows are in {failed}" in run.stderr
    assert not errors_path(tmp_path / "out.jsonl").exists()
    check_outputs(case, tmp_path / "out.jsonl", failed)


def test_a_model_error_fails_its_row_alone(tmp_path: Path) -> None:
    # The toy echo model raises for `fail: true`; the rest of its chunk must still be predicted.
    config = tmp_path / "host.yaml"
    config.write_text("models:\n  - class_path: tests.support.toy:EchoModel\n")
    lines = [{"id": f"e{n}", "x": n, "fail": n % 10 == 3} for n in range(50)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    for options in ((), ("--workers", "2", "--chunk-size", "8")):
        output = tmp_path / f"out{len(options)}.jsonl"
        run = batch("echo", source, output, *options, config=config)
        assert run.returncode == 1, run.stderr
        assert run.summary()[:3] == (50, 45, 5)
        assert read_rows(output) == [{"id": f"e{n}", "prediction": {"y": 2.0 * n, "text": ""}}
                                     for n in range(50) if n % 10 != 3]
        failures = read_rows(errors_path(output))
        assert [(row["row"], row["id"], row["code"]) for row in failures] == [
            (n + 1, f"e{n}", MODEL_ERROR) for n in range(50) if n % 10 == 3]
        assert all("asked to fail" in row["message"] for row in failures)


def test_a_model_with_an_async_predict_is_scored(tmp_path: Path) -> None:
    # The daemon serves models whose predict is a coroutine; batch must await them too.
    config = tmp_path / "host.yaml"
    config.write_text("models:\n  - class_path: tests.support.toy:AsyncEchoModel\n")
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"x": n}) + "\n" for n in range(1, 6)))
    run = batch("echo", source, tmp_path / "out.jsonl", config=config)
    assert run.returncode == 0, run.stderr
    assert "never awaited" not in run.stderr
    assert [row["prediction"]["y"] for row in read_rows(tmp_path / "out.jsonl")] == [2.0, 4.0, 6.0, 8.0, 10.0]


def test_without_version_the_latest_version_scores(tmp_path: Path) -> None:
    # --version defaults to the latest (as `hostd batch --help` says), not the first configured.
    config = tmp_path / "host.yaml"
    config.write_text(textwrap.dedent("""\
        models:
          - class_path: tests.support.toy:EchoModel
            configuration: {name: echo, version: 1.2.0, factor: 2}
          - class_path: tests.support.toy:EchoModel
            configuration: {name: echo, version: 1.10.0, factor: 3}
          - class_path: tests.support.toy:EchoModel
            configuration: {name: echo, version: 1.9.0, factor: 5}
        """))
    source = tmp_path / "in.jsonl"
    source.write_text('{"x": 1}\n')
    for options, factor in (((), 3.0), (("--version", "1.9.0"), 5.0), (("--version", "1.2.0"), 2.0)):
        run = batch("echo", source, tmp_path / "out.jsonl", *options, config=config)
        assert run.returncode == 0, run.stderr
        assert read_rows(tmp_path / "out.jsonl")[0]["prediction"]["y"] == factor, options


# -- formats ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_jsonl_in_csv_out_has_the_same_rows_as_jsonl_out(reference: Callable[[str], Reference], model: str,
                                                         tmp_path: Path) -> None:
    case, jsonl_output, _ = reference(model)
    output = tmp_path / "out.csv"
    run = batch(model, case.write_jsonl(tmp_path / "in.jsonl"), output)
    assert run.returncode == 1, run.stderr
    assert header(output) == OUTPUT_COLUMNS[model]
    assert header(errors_path(output)) == ["row", "id", "code", "message"]
    outputs, _ = check_outputs(case, output, text=True)
    check_predictions(case, outputs)
    if model in DETERMINISTIC:
        assert outputs == [{"id": str(row["id"]), **{name: str(value) for name, value in row["prediction"].items()}}
                           for row in read_rows(jsonl_output)]


@pytest.mark.parametrize("model", MODELS)
def test_csv_in_csv_out(tmp_path: Path, model: str) -> None:
    # Numbers are text in CSV and the digits' 8x8 image is a JSON cell; both must reach the model.
    case = make_case(model, 1000, some_without_id=False).tabular()
    source = case.write_csv(tmp_path / "in.csv")
    if model == "digits_model":
        assert '"[[0, 0, 5, 13, 9, 1, 0, 0], ' in source.read_text()
    output = tmp_path / "out.csv"
    run = batch(model, source, output)
    expected = case.expected()
    assert run.returncode == 1, run.stderr
    assert run.summary() == (expected.rows, len(expected.ids), len(expected.errors), "local")
    assert {code for _, code, _ in expected.errors.values()} == {INVALID}
    outputs, _ = check_outputs(case, output, text=True)
    check_predictions(case, outputs)


@pytest.mark.parametrize("model", DETERMINISTIC)
def test_parquet_out_and_parquet_in(reference: Callable[[str], Reference], model: str, tmp_path: Path) -> None:
    case = make_case(model, COUNT[model], some_without_id=False)
    output = tmp_path / "out.parquet"
    run = batch(model, case.write_jsonl(tmp_path / "in.jsonl"), output)
    assert run.returncode == 1, run.stderr
    assert header(output) == OUTPUT_COLUMNS[model]
    assert header(errors_path(output)) == ["row", "id", "code", "message"]
    outputs, _ = check_outputs(case, output)
    check_predictions(case, outputs)
    reference_case, reference_output, _ = reference(model)
    wanted = by_input(reference_case, read_rows(reference_output))
    assert by_input(case, outputs) == {key: wanted[key] for key in by_input(case, outputs)}

    typed = case.typed()
    source = typed.write_parquet(tmp_path / "in.parquet")
    assert pq.read_table(source).num_rows == typed.expected().rows
    output = tmp_path / "again.parquet"
    run = batch(model, source, output)
    assert run.returncode == 1, run.stderr
    outputs, _ = check_outputs(typed, output)
    assert by_input(typed, outputs) == {key: wanted[key] for key in by_input(typed, outputs)}


def test_parquet_out_when_some_rows_have_no_id(tmp_path: Path) -> None:
    # Rows without an id are known by their row number, next to rows with string ids.
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}\n'
                      '{"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}\n')
    run = batch("iris_model", source, tmp_path / "out.parquet")
    assert run.returncode == 0, run.stderr
    rows = read_rows(tmp_path / "out.parquet")
    assert [str(row["id"]) for row in rows] == ["a", "2"]
    assert [row["species"] for row in rows] == ["Iris setosa", "Iris virginica"]


@pytest.mark.parametrize(("name", "fmt"), [("in.ndjson", "jsonl"), ("in.json", "jsonl"), ("in.pq", "parquet"),
                                           ("in.CSV", "csv")])
def test_formats_come_from_the_extension(tmp_path: Path, name: str, fmt: str) -> None:
    case = make_case("iris_model", 100, some_without_id=False)
    source = tmp_path / name
    {"jsonl": case.write_jsonl, "csv": case.write_csv, "parquet": case.write_parquet}[fmt](source)
    written = {"jsonl": case, "csv": case.tabular(), "parquet": case.typed()}[fmt]
    output = tmp_path / "out.jsonl"
    run = batch("iris_model", source, output)
    assert run.returncode == 1, run.stderr
    check_outputs(written, output)


def test_format_option_applies_to_input_and_output(tmp_path: Path) -> None:
    case = make_case("iris_model", 100, some_without_id=False).tabular()
    source = case.write_csv(tmp_path / "in.txt")
    output = tmp_path / "out.txt"
    run = batch("iris_model", source, output, "--format", "csv")
    assert run.returncode == 1, run.stderr
    expected = case.expected()
    with output.open(newline="") as handle:
        assert [row["id"] for row in csv.DictReader(handle)] == expected.ids
    with (tmp_path / "out.errors.txt").open(newline="") as handle:
        assert {int(row["row"]): row["code"] for row in csv.DictReader(handle)} == {
            row: code for row, (_, code, _) in expected.errors.items()}


# -- empty input -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "content"), [("in.jsonl", b""), ("in.jsonl", b"\n  \n"), ("in.csv", b""),
                                               ("in.csv", b"id,sepal_length,sepal_width,petal_length,petal_width\n")])
def test_empty_input_gives_empty_output_files_and_exit_0(tmp_path: Path, name: str, content: bytes) -> None:
    source = tmp_path / name
    source.write_bytes(content)
    output = tmp_path / f"out{source.suffix}"
    run = batch("iris_model", source, output)
    assert run.returncode == 0, run.stderr
    assert run.summary() == (0, 0, 0, "local")
    if source.suffix == ".csv":
        assert output.read_text().splitlines() == ["id,species"]
        assert errors_path(output).read_text().splitlines() == ["row,id,code,message"]
    else:
        assert output.read_bytes() == errors_path(output).read_bytes() == b""


def test_empty_parquet_input_gives_empty_parquet_files(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({name: pa.array([], pa.float64()) for name in
                             ["sepal_length", "sepal_width", "petal_length", "petal_width"]}), source)
    output = tmp_path / "out.parquet"
    run = batch("iris_model", source, output)
    assert run.returncode == 0, run.stderr
    assert run.summary() == (0, 0, 0, "local")
    assert header(output) == ["id", "species"]
    assert header(errors_path(output)) == ["row", "id", "code", "message"]
    assert read_rows(output) == read_rows(errors_path(output)) == []


# -- usage errors ------------------------------------------------------------------------------------

USAGE_ERRORS = {
    "missing input": (["--model", "iris_model", "--input", "{tmp}/nowhere.jsonl"], ["no such file", "nowhere.jsonl"]),
    "unknown model": (["--model", "iris"], ["model 'iris'", "iris_model", "digits_model", "diabetes_model"]),
    "unknown version": (["--model", "iris_model", "--version", "9.9.9"], ["version '9.9.9'", "iris_model 1.0.0"]),
    "unknown engine": (["--model", "iris_model", "--engine", "flink"], ["flink", "local", "spark"]),
    "unknown input extension": (["--model", "iris_model", "--input", "{tmp}/in.txt"], ["in.txt", "--format"]),
    "unknown output extension": (["--model", "iris_model", "--output", "{tmp}/out.xlsx"], ["out.xlsx", "--format"]),
    "unknown format": (["--model", "iris_model", "--format", "xml"], ["xml"]),
}


@pytest.mark.parametrize("problem", USAGE_ERRORS)
def test_usage_errors_exit_2_with_a_clear_message(tmp_path: Path, problem: str) -> None:
    options, says = USAGE_ERRORS[problem]
    source = make_case("iris_model", 5).write_jsonl(tmp_path / "in.jsonl")
    (tmp_path / "in.txt").write_bytes(source.read_bytes())
    args = ["--input", str(source), "--output", str(tmp_path / "out.jsonl"),
            *(option.format(tmp=tmp_path) for option in options)]
    result = subprocess.run([HOSTD, "batch", str(ROOT / "host.yaml"), *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    for piece in says:
        assert piece in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.xlsx").exists()


# -- workers, chunks, memory, progress --------------------------------------------------------------

@pytest.mark.timeout(90)
@pytest.mark.parametrize(("model", "options"), [
    ("iris_model", ("--chunk-size", "7")),
    ("iris_model", ("--workers", "3", "--chunk-size", "50")),
    ("digits_model", ("--workers", "2")),
    ("digits_model", ("--workers", "2", "--chunk-size", "7")),
], ids=lambda value: " ".join(value) if isinstance(value, tuple) else value)
def test_workers_and_chunk_size_do_not_change_the_files(reference: Callable[[str], Reference], model: str,
                                                        options: tuple[str, ...], tmp_path: Path) -> None:
    case, output, _ = reference(model)
    again = tmp_path / "out.jsonl"
    run = batch(model, case.write_jsonl(tmp_path / "in.jsonl"), again, *options)
    assert run.returncode == 1, run.stderr
    assert run.summary()[:3] == reference(model)[2].summary()[:3]
    assert again.read_bytes() == output.read_bytes()
    assert errors_path(again).read_bytes() == errors_path(output).read_bytes()


def peak_rss_kib(*args: str | Path) -> tuple[int, Run]:
    """Run ``hostd batch`` from a fresh Python that reports its one child's peak RSS (KiB)."""
    script = textwrap.dedent("""\
        import json, resource, subprocess, sys
        result = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=100)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(json.dumps([peak, result.returncode, result.stdout, result.stderr]))
        """)
    result = subprocess.run([sys.executable, "-c", script, HOSTD, "batch", str(ROOT / "host.yaml"), *map(str, args)],
                            cwd=ROOT, capture_output=True, text=True, timeout=110)
    peak, returncode, stdout, stderr = json.loads(result.stdout)
    return peak, Run(returncode, stdout, stderr)


@pytest.mark.timeout(100)
def test_a_big_file_is_scored_in_bounded_memory(tmp_path: Path) -> None:
    # 300,000 iris rows (~31 MB): held in memory as dicts they would take ~200 MB.
    rows = [json.loads(entry.line) for entry in make_case("iris_model", 150, some_without_id=False).entries
            if entry.code is None and not entry.blank]
    big = tmp_path / "big.jsonl"
    with big.open("w") as handle:
        for n in range(300_000):
            handle.write(json.dumps({**rows[n % len(rows)], "id": n}) + "\n")
    assert big.stat().st_size > 25_000_000
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(row) + "\n" for row in rows))

    baseline, run = peak_rss_kib("--model", "iris_model", "--input", small, "--output", tmp_path / "small.out.jsonl")
    assert run.returncode == 0, run.stderr
    peak, run = peak_rss_kib("--model", "iris_model", "--input", big, "--output", tmp_path / "big.out.jsonl")
    assert run.returncode == 0, run.stderr
    assert run.summary() == (300_000, 300_000, 0, "local")
    assert peak - baseline < 40 * 1024, f"peak RSS {peak} KiB vs {baseline} KiB for {len(rows)} rows"
    with (tmp_path / "big.out.jsonl").open() as handle:
        assert sum(1 for _ in handle) == 300_000


def test_progress_bar_only_when_asked(tmp_path: Path) -> None:
    source = make_case("iris_model", 200).write_jsonl(tmp_path / "in.jsonl")
    quiet = batch("iris_model", source, tmp_path / "quiet.jsonl", "--no-progress")
    assert quiet.stderr.splitlines()[0].startswith("hostd batch: ")
    assert len(quiet.stderr.splitlines()) == 2
    shown = batch("iris_model", source, tmp_path / "shown.jsonl", "--progress")
    assert shown.returncode == quiet.returncode == 1
    assert " rows" in shown.stderr.split("hostd batch:")[0]  # tqdm's bar, before the summary
    assert shown.summary()[:3] == quiet.summary()[:3]
    assert (tmp_path / "shown.jsonl").read_bytes() == (tmp_path / "quiet.jsonl").read_bytes()
