"""`hostd batch` gives the same rows on every engine: local, beam (DirectRunner, in one process or
several), mapreduce (mrjob's inline runner, and its local runner with mapper subprocesses), spark
(local[2]) and ray (a Ray of its own).

Every engine but local writes its own output: a directory of part files, committed by a _SUCCESS
marker written last, and the failed rows in a directory beside it (mapreduce writes them into the
output directory, beside the predictions). Only local keeps the input order, so rows are compared
as sets. The diabetes model samples, so for it only the ids and the kind of values are compared.

Spark and Ray start a JVM or a Ray for every run (10-20 s), so each runs only a few times here: the
iris model's JSONL (which several tests share), the digits model's Parquet, CSV on Spark's own
reader, and a run that fails.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.batch.helpers import (
    CONFIG,
    ERROR_COLUMNS,
    MODEL_ERROR,
    MODELS,
    OUTPUT_COLUMNS,
    SUCCESS,
    SUMMARY,
    Case,
    Run,
    batch,
    check_outputs,
    check_predictions,
    errors_path,
    header,
    make_case,
    parts,
    read_results,
)

COUNT = {"iris_model": 3000, "digits_model": 2000, "diabetes_model": 2000}
ENGINES = {
    "local": ("--engine", "local"),
    "beam": ("--engine", "beam"),
    "beam-multiprocessing": ("--engine", "beam", "--", "--direct_num_workers=2",
                             "--direct_running_mode=multi_processing"),
    "mapreduce": ("--engine", "mapreduce"),
    "mapreduce-r-local": ("--engine", "mapreduce", "--", "-r", "local"),
    # Two shuffle partitions, not 200, for the job's two small aggregations: ~6 s less a run here.
    "spark": ("--engine", "spark", "--", "--master", "local[2]", "--conf", "spark.sql.shuffle.partitions=2"),
    "ray": ("--engine", "ray", "--workers", "1", "--", "--num-cpus", "2"),
}
DISTRIBUTED = [name for name in ENGINES if name != "local"]  # they write directories and commit them
SUBPROCESSES = ("beam-multiprocessing", "mapreduce-r-local")
HEAVY = ("spark", "ray")  # a JVM or a Ray per run
# Every engine with every model, but the diabetes model only in-process (its rows hold no surprise
# the other two lack, and each run with worker processes costs seconds), and Spark and Ray with the
# iris model only (the digits model runs on them in Parquet).
MATRIX = [(engine, model) for engine in ENGINES for model in MODELS
          if not (engine in SUBPROCESSES and model == "diabetes_model")
          and not (engine in HEAVY and model != "iris_model")]

Result = tuple[Case, Path, Run]


def engine_name(engine: str) -> str:
    return ENGINES[engine][1]


def options(engine: str, *more: str) -> tuple[str, ...]:
    """The engine's options with ``more`` before its ``--`` (everything after it goes to the engine)."""
    flags = ENGINES[engine]
    split = flags.index("--") if "--" in flags else len(flags)
    return (*flags[:split], *more, *flags[split:])


def run_on(engine: str, model: str, source: Path | str, output: Path, *more: str, config: Path = CONFIG) -> Run:
    """``hostd batch`` on ``engine`` (``more``: options before its ``--``). Ray gets a HOME of its own
    beside the output: it writes ~/.ray."""
    env = None
    if engine_name(engine) == "ray":
        home = output.parent / "home"
        home.mkdir(exist_ok=True)
        env = {"HOME": str(home)}
    return batch(model, source, output, *options(engine, *more), config=config, env=env)


def errors_of(engine: str, output: Path) -> Path:
    """Where ``engine`` puts the failed rows: beside the output, or (mapreduce) in it."""
    return output if engine_name(engine) == "mapreduce" else errors_path(output)


def as_set(rows: list[dict[str, Any]]) -> set[str]:
    return {json.dumps(row, sort_keys=True) for row in rows}


def without_json_positions(failures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**row, "message": re.sub(r"line \d+ column \d+ \(char \d+\)", "line ?", row["message"])}
            for row in failures]


def hostd_lines(run: Run) -> list[str]:
    """hostd's own lines on stderr (the engines log plenty)."""
    return [line for line in run.lines if line.startswith("hostd batch: ")]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Result]:
    """``scored(engine, model)``: the model's few thousand rows (bad ones included), JSONL in and
    out on ``engine``, run once per module."""
    runs: dict[tuple[str, str], Result] = {}
    cases = {model: make_case(model, COUNT[model]) for model in MODELS}

    def get(engine: str, model: str) -> Result:
        if (engine, model) not in runs:
            folder = tmp_path_factory.mktemp(f"{engine}-{model}")
            source = cases[model].write_jsonl(folder / "in.jsonl")
            runs[engine, model] = cases[model], folder / "out.jsonl", run_on(engine, model, source,
                                                                             folder / "out.jsonl")
        return runs[engine, model]

    return get


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("engine", "model"), MATRIX)
def test_every_row_is_predicted_or_reported(scored: Callable[[str, str], Result], engine: str, model: str) -> None:
    case, output, run = scored(engine, model)
    expected = case.expected()
    assert run.returncode == 1, run.stderr
    assert run.summary() == (expected.rows, len(expected.ids), len(expected.errors), engine_name(engine))
    assert f"hostd batch: failed rows are in {errors_of(engine, output)}" in run.lines
    assert "Traceback" not in run.stderr
    outputs, _ = check_outputs(case, output, errors_of(engine, output), ordered=engine == "local")
    check_predictions(case, outputs)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("engine", "model"), [(engine, model) for engine, model in MATRIX if engine != "local"])
def test_same_rows_and_error_rows_as_the_local_engine(scored: Callable[[str, str], Result], engine: str,
                                                      model: str) -> None:
    _, local, _ = scored("local", model)
    _, output, run = scored(engine, model)
    assert run.returncode == 1, run.stderr
    outputs, failures = read_results(output, errors_of(engine, output))
    local_outputs, local_failures = read_results(local)
    if engine_name(engine) == "spark":
        # Spark's text reader hands a line over without its newline: where orjson says a line that
        # is not JSON ends differs ("line 1 column 47 (char 46)", locally "line 2 column 1 (char 47)").
        failures, local_failures = without_json_positions(failures), without_json_positions(local_failures)
    assert as_set(failures) == as_set(local_failures)
    assert len(failures) == len(local_failures)
    if model == "diabetes_model":  # it samples: the same ids, each with one prediction
        ids = sorted(repr(row["id"]) for row in outputs)
        assert ids == sorted(repr(row["id"]) for row in local_outputs)
        assert len(set(ids)) == len(ids)
    else:
        assert as_set(outputs) == as_set(local_outputs)
        assert len(outputs) == len(local_outputs)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("engine", DISTRIBUTED)
def test_the_output_is_committed_by_SUCCESS_written_last(scored: Callable[[str, str], Result], engine: str) -> None:
    _, output, run = scored(engine, "iris_model")
    marker = output / SUCCESS
    assert output.is_dir() and marker.is_file()
    summary = next(index for index, line in enumerate(run.lines) if SUMMARY.match(line))
    assert run.lines[summary + 1] == f"hostd batch: committed {marker}"
    written = [*parts(output), *parts(errors_of(engine, output))]
    assert written, "no part files"
    assert max(part.stat().st_mtime_ns for part in written) <= marker.stat().st_mtime_ns


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str, str, str], tuple[set[str], set[str]]]:
    """``tabular(engine, model, source, output)``: a model's rows as a CSV or Parquet file (``source``
    is its extension) scored into ``output`` (an extension too) on ``engine``, checked, as (output
    rows, error rows) sets; run once per module."""
    runs: dict[tuple[str, str, str, str], tuple[set[str], set[str]]] = {}

    def get(engine: str, model: str, source_suffix: str, output_suffix: str) -> tuple[set[str], set[str]]:
        key = engine, model, source_suffix, output_suffix
        if key not in runs:
            folder = tmp_path_factory.mktemp(f"{engine}-{model}{source_suffix}")
            case = make_case(model, 1000, some_without_id=False)
            case = case.tabular() if source_suffix == ".csv" else case.typed()
            write = case.write_csv if source_suffix == ".csv" else case.write_parquet
            source = write(folder / f"in{source_suffix}")
            output = folder / f"out{output_suffix}"
            run = run_on(engine, model, source, output)
            assert run.returncode == 1, run.stderr
            if output_suffix != ".jsonl":
                assert header(output) == OUTPUT_COLUMNS[model]
                assert header(errors_of(engine, output)) == ERROR_COLUMNS
            outputs, failures = check_outputs(case, output, errors_of(engine, output), ordered=engine == "local",
                                              text=output_suffix == ".csv")
            runs[key] = as_set(outputs), as_set(failures)
        return runs[key]

    return get


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("engine", "model", "output"), [
    ("beam", "iris_model", ".jsonl"),
    ("beam", "digits_model", ".parquet"),
    ("mapreduce", "iris_model", ".jsonl"),
    ("mapreduce", "digits_model", ".jsonl"),
    ("spark", "iris_model", ".jsonl"),
])
def test_csv_in_as_on_the_local_engine(tabular: Callable[[str, str, str, str], tuple[set[str], set[str]]],
                                       engine: str, model: str, output: str) -> None:
    # Numbers are text in CSV, the digits' 8x8 image a JSON cell, a missing value an empty cell.
    # Ray and Spark read CSV as beam does (hostd.partitions.read_payloads).
    assert tabular(engine, model, ".csv", output) == tabular("local", model, ".csv", output)


ODD_CSV = (b"\xef\xbb\xbfid,sepal_length,sepal_width,petal_length,petal_width\n"
           b"a,5.1,3.5,1.4,0.2\n" b'b,6.3,2.9,"5.6",1.8\n' b"c,5.1,3.5,1.4,0.2,surplus\n"
           b'"d\nx",5.9,3.0,4.2,1.5\n' b"e,5.1,3.5,1.4\rf,6.7,3.1,4.4,1.4\n" b"g,5.1,,1.4,0.2\n" b"h\n")
IRIS_LINE = b'{"id": "%s", "sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'
ODD_JSONL = IRIS_LINE % b"a" + b"\r\n" + IRIS_LINE % b"b" + b"\r" + IRIS_LINE % b"c" + b"\n" + IRIS_LINE % b"d" + b"\n"


def odd_parquet() -> bytes:
    """Iris with a binary id and decimal measurements (the payload engines failed on both)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    sink = pa.BufferOutputStream()
    measures = {name: pa.array([Decimal(first), Decimal(second)], pa.decimal128(4, 2)) for name, first, second in (
        ("sepal_length", "5.10", "6.30"), ("sepal_width", "3.50", "2.90"), ("petal_length", "1.40", "5.60"),
        ("petal_width", "0.20", "1.80"))}
    pq.write_table(pa.table({"id": pa.array([b"a", b"b"], pa.binary()), **measures}), sink)
    return bytes(sink.getvalue())


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("name", "content", "failed"), [
    ("odd.csv", ODD_CSV, {3, 5, 7, 8}),  # the surplus cell, the short row before the \r, the empty cell, "h"
    ("odd.jsonl", ODD_JSONL, {2}),  # "b" and "c" on one line
    ("odd.parquet", odd_parquet(), set()),
])
def test_spark_reads_a_file_as_every_other_engine(tmp_path: Path, name: str, content: bytes, failed: set[int]) -> None:
    """What Spark's own readers read otherwise: in a CSV (its CSV parser is not used) a byte order mark, a
    quoted newline, a surplus cell (dropped without a word), a bare carriage return (Python's csv ends a
    record there), an empty cell, a short row; in JSONL, a bare carriage return (a line ends at \\n only)."""
    source = tmp_path / name
    source.write_bytes(content)
    results = {}
    for engine in ("local", "spark"):
        output = tmp_path / engine / "out.jsonl"
        output.parent.mkdir()
        run = run_on(engine, "iris_model", source, output, "--allow-errors")
        assert run.returncode == 0, run.stderr
        predictions, errors = read_results(output, errors_path(output))
        results[engine] = as_set(predictions), {(error["row"], error["id"], error["code"]) for error in errors}
    assert results["spark"] == results["local"]
    assert {row for row, _, _ in results["local"][1]} == failed


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("engine", "output"), [
    ("beam", ".parquet"), ("spark", ".parquet"), ("ray", ".parquet"),
    ("mapreduce", ".jsonl"),  # it writes JSONL only
])
def test_parquet_in_as_on_the_local_engine(tabular: Callable[[str, str, str, str], tuple[set[str], set[str]]],
                                           engine: str, output: str) -> None:
    assert tabular(engine, "digits_model", ".parquet", output) == tabular("local", "digits_model", ".parquet", output)


@pytest.mark.parametrize(("engine", "suffix"), [
    ("beam", ".csv"), ("mapreduce", ".csv"), ("spark", ".csv"), ("ray", ".csv"), ("mapreduce", ".parquet"),
])
def test_formats_an_engine_does_not_write_are_refused(tmp_path: Path, engine: str, suffix: str) -> None:
    source = make_case("iris_model", 10).write_jsonl(tmp_path / "in.jsonl")
    output = tmp_path / f"out{suffix}"
    run = run_on(engine, "iris_model", source, output)
    assert run.returncode == 2, run.stderr  # a usage error, before anything runs
    said = run.stderr.strip().splitlines()[-1]  # which formats it writes
    assert f"{engine} engine writes" in said, said
    assert all(fmt in said for fmt in (["jsonl"] if engine == "mapreduce" else ["jsonl", "parquet"])), said
    assert "Traceback" not in run.stderr
    assert not output.exists() and not errors_path(output).exists()


@pytest.mark.parametrize("engine", ["beam", "mapreduce"])
def test_allow_errors_and_chunk_size(tmp_path: Path, engine: str) -> None:
    case = make_case("digits_model", 300)
    output = tmp_path / "out.jsonl"
    run = run_on(engine, "digits_model", case.write_jsonl(tmp_path / "in.jsonl"), output,
                 "--allow-errors", "--chunk-size", "7")
    assert run.returncode == 0, run.stderr
    expected = case.expected()
    assert run.summary() == (expected.rows, len(expected.ids), len(expected.errors), engine_name(engine))
    check_outputs(case, output, errors_of(engine, output), ordered=False)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("engine", ["beam", "mapreduce"])
def test_empty_input(tmp_path: Path, engine: str, fmt: str) -> None:
    # Not on Spark and Ray: 10-20 s a run.
    source = tmp_path / f"in.{fmt}"
    source.write_text("")
    output = tmp_path / "out.jsonl"
    run = run_on(engine, "iris_model", source, output)
    assert run.returncode == 0, run.stderr
    assert run.summary() == (0, 0, 0, engine_name(engine))
    assert hostd_lines(run)[-1] == f"hostd batch: committed {output / SUCCESS}"
    assert (output / SUCCESS).is_file()
    assert read_results(output, errors_of(engine, output)) == ([], [])


def test_beam_reads_a_file_named_like_a_pattern_as_that_file(tmp_path: Path) -> None:
    """``g[1].jsonl`` is that file where it exists (Beam's MatchFiles read ``g1.jsonl``)."""
    row = b'{"id": "%s", "sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}\n'
    (tmp_path / "g[1].jsonl").write_bytes(row % b"bracketed")
    (tmp_path / "g1.jsonl").write_bytes(row % b"other" * 3)
    output = tmp_path / "out.jsonl"
    run = run_on("beam", "iris_model", tmp_path / "g[1].jsonl", output)
    assert run.returncode == 0, run.stderr
    predictions, _ = read_results(output, errors_of("beam", output))
    assert [row["id"] for row in predictions] == ["bracketed"]


def test_beam_refuses_credentials_in_a_url_and_never_shows_them(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("")
    run = batch("iris_model", source, "s3://AKIDEXAMPLE:hunter2secret@bucket/out.jsonl",  # type: ignore[arg-type]
                *options("beam"))
    assert run.returncode != 0
    assert "does not take credentials in a URL" in run.stderr and "hunter2secret" not in run.stderr + run.stdout


NOT_GZIP = b'{"id": "x", "sepal_length": 5.1}\n' * 10  # JSONL, in a file whose name says gzip


@pytest.mark.timeout(90)
@pytest.mark.parametrize("engine", [
    "beam", "mapreduce", "ray", "spark",
])
def test_a_run_that_fails_leaves_no_SUCCESS(scored: Callable[[str, str], Result], tmp_path: Path,
                                            engine: str) -> None:
    # Into an output an earlier run committed (a copy of one this module made anyway), from an input
    # that cannot be decompressed, which the engine finds once its workers read it: after it started,
    # not in hostd's checks.
    output = tmp_path / "out.jsonl"
    shutil.copytree(scored(engine, "iris_model")[1], output)
    assert (output / SUCCESS).is_file()
    broken = tmp_path / "in.jsonl.gz"
    broken.write_bytes(NOT_GZIP)
    # mapreduce numbers a local input itself (a line at a time, as text); a URL goes to the job's reader.
    source = broken.as_uri() if engine_name(engine) == "mapreduce" else broken
    run = run_on(engine, "iris_model", source, output, "--format", "jsonl")
    assert run.returncode == 1, run.stderr
    assert not (output / SUCCESS).exists()
    said = run.stderr.strip().splitlines()[-1]
    assert re.search(rf"\b{engine_name(engine)} job failed\b.*(gzip|header check)", said, re.IGNORECASE), said
    assert not any(line.startswith("hostd batch: committed") for line in hostd_lines(run))
    if engine != "ray":  # Ray's own log prints its tracebacks ("Full stack trace:")
        assert not any(line.startswith("Traceback") for line in run.lines), run.stderr


@pytest.mark.parametrize("engine", ["beam", "mapreduce", "spark", "ray"])
def test_missing_input_and_unknown_model_exit_2(tmp_path: Path, engine: str) -> None:
    missing = run_on(engine, "iris_model", tmp_path / "nowhere.jsonl", tmp_path / "out.jsonl")
    assert missing.returncode == 2
    assert "no such file" in missing.stderr and "nowhere.jsonl" in missing.stderr
    source = make_case("iris_model", 10).write_jsonl(tmp_path / "in.jsonl")
    unknown = run_on(engine, "iris", source, tmp_path / "out.jsonl")
    assert unknown.returncode == 2
    assert "model 'iris'" in unknown.stderr
    assert all(model in unknown.stderr for model in MODELS)
    for run in (missing, unknown):
        assert "Traceback" not in run.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("engine", [engine for engine in ENGINES if engine not in HEAVY])
def test_a_model_from_the_working_directory_and_its_model_errors(tmp_path: Path, engine: str) -> None:
    # hostd runs in /work/main, so a config may name tests.support.toy (a module there), as with
    # `hostd run`; every engine's workers must find it. The toy model raises for `fail: true`. (Spark's
    # and Ray's workers find it too, but a run of theirs costs 10-20 s.)
    config = tmp_path / "host.yaml"
    config.write_text("models:\n  - class_path: tests.support.toy:EchoModel\n")
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"e{n}", "x": n, "fail": n % 10 == 3}) + "\n" for n in range(40)))
    output = tmp_path / "out.jsonl"
    run = run_on(engine, "echo", source, output, "--chunk-size", "8", config=config)
    assert run.returncode == 1, run.stderr
    assert run.summary() == (40, 36, 4, engine_name(engine))
    outputs, failures = read_results(output, errors_of(engine, output))
    assert as_set(outputs) == as_set([{"id": f"e{n}", "prediction": {"y": 2.0 * n, "text": ""}}
                                      for n in range(40) if n % 10 != 3])
    assert {(row["row"], row["id"], row["code"]) for row in failures} == {
        (n + 1, f"e{n}", MODEL_ERROR) for n in range(40) if n % 10 == 3}
