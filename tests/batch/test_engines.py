"""`hostd batch` gives the same rows on every engine: local, beam (DirectRunner, in one process or
several) and mapreduce (mrjob's inline runner, and its local runner with mapper subprocesses).

Only local keeps the input order, so rows are compared as sets. The diabetes model samples, so for
it only the ids and the kind of values are compared."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.batch.helpers import (
    MODEL_ERROR,
    MODELS,
    OUTPUT_COLUMNS,
    Case,
    Run,
    batch,
    check_outputs,
    check_predictions,
    errors_path,
    header,
    make_case,
    read_rows,
)

COUNT = {"iris_model": 3000, "digits_model": 2000, "diabetes_model": 2000}
ENGINES = {
    "local": ("--engine", "local"),
    "beam": ("--engine", "beam"),
    "beam-multiprocessing": ("--engine", "beam", "--", "--direct_num_workers=2",
                             "--direct_running_mode=multi_processing"),
    "mapreduce": ("--engine", "mapreduce"),
    "mapreduce-r-local": ("--engine", "mapreduce", "--", "-r", "local"),
}
OTHERS = [name for name in ENGINES if name != "local"]
SUBPROCESSES = ("beam-multiprocessing", "mapreduce-r-local")
# Every engine with every model, but the diabetes model only in-process (its rows hold no surprise
# the other two lack, and each run with worker processes costs seconds).
MATRIX = [(engine, model) for engine in ENGINES for model in MODELS
          if not (engine in SUBPROCESSES and model == "diabetes_model")]

Result = tuple[Case, Path, Run]


def engine_name(engine: str) -> str:
    return ENGINES[engine][1]


def options(engine: str, *more: str) -> tuple[str, ...]:
    """The engine's options with ``more`` before its ``--`` (everything after it goes to the engine)."""
    flags = ENGINES[engine]
    split = flags.index("--") if "--" in flags else len(flags)
    return (*flags[:split], *more, *flags[split:])


def as_set(rows: list[dict[str, Any]]) -> set[str]:
    return {json.dumps(row, sort_keys=True) for row in rows}


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
            runs[engine, model] = cases[model], folder / "out.jsonl", batch(model, source, folder / "out.jsonl",
                                                                              *ENGINES[engine])
        return runs[engine, model]

    return get


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("engine", "model"), MATRIX)
def test_every_row_is_predicted_or_reported(scored: Callable[[str, str], Result], engine: str, model: str) -> None:
    case, output, run = scored(engine, model)
    expected = case.expected()
    assert run.returncode == 1, run.stderr
    assert run.summary() == (expected.rows, len(expected.ids), len(expected.errors), engine_name(engine))
    assert f"hostd batch: failed rows are in {errors_path(output)}" in run.stderr
    assert "Traceback" not in run.stderr
    outputs, _ = check_outputs(case, output, ordered=engine == "local")
    check_predictions(case, outputs)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("engine", "model"), [(engine, model) for engine, model in MATRIX if engine != "local"])
def test_same_rows_and_error_rows_as_the_local_engine(scored: Callable[[str, str], Result], engine: str,
                                                      model: str) -> None:
    _, local, _ = scored("local", model)
    _, output, run = scored(engine, model)
    assert run.returncode == 1, run.stderr
    assert as_set(read_rows(errors_path(output))) == as_set(read_rows(errors_path(local)))
    if model == "diabetes_model":  # it samples: the same ids, each with one prediction
        ids = sorted(repr(row["id"]) for row in read_rows(output))
        assert ids == sorted(repr(row["id"]) for row in read_rows(local))
        assert len(set(ids)) == len(ids)
    else:
        assert as_set(read_rows(output)) == as_set(read_rows(local))
        assert len(read_rows(output)) == len(read_rows(local))


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str, str], tuple[set[str], set[str]]]:
    """``tabular(engine, model, suffix)``: a model's rows as CSV or Parquet in and out on ``engine``,
    checked, as (output rows, error rows) sets; run once per module."""
    runs: dict[tuple[str, str, str], tuple[set[str], set[str]]] = {}

    def get(engine: str, model: str, suffix: str) -> tuple[set[str], set[str]]:
        if (engine, model, suffix) not in runs:
            folder = tmp_path_factory.mktemp(f"{engine}-{model}{suffix}")
            case = make_case(model, 1000, some_without_id=False)
            case = case.tabular() if suffix == ".csv" else case.typed()
            write = case.write_csv if suffix == ".csv" else case.write_parquet
            source = write(folder / f"in{suffix}")
            output = folder / f"out{suffix}"
            run = batch(model, source, output, *ENGINES[engine])
            assert run.returncode == 1, run.stderr
            assert header(output) == OUTPUT_COLUMNS[model]
            assert header(errors_path(output)) == ["row", "id", "code", "message"]
            outputs, failures = check_outputs(case, output, ordered=engine == "local", text=suffix == ".csv")
            runs[engine, model, suffix] = as_set(outputs), as_set(failures)
        return runs[engine, model, suffix]

    return get


@pytest.mark.parametrize("model", ["iris_model", "digits_model"])
@pytest.mark.parametrize("engine", ["beam", "mapreduce"])
def test_csv_in_csv_out_as_on_the_local_engine(tabular: Callable[[str, str, str], tuple[set[str], set[str]]],
                                               engine: str, model: str) -> None:
    # Numbers are text in CSV, the digits' 8x8 image a JSON cell.
    assert tabular(engine, model, ".csv") == tabular("local", model, ".csv")


@pytest.mark.parametrize("engine", ["beam", "mapreduce"])
def test_parquet_in_parquet_out_as_on_the_local_engine(tabular: Callable[[str, str, str], tuple[set[str], set[str]]],
                                                       engine: str) -> None:
    assert tabular(engine, "digits_model", ".parquet") == tabular("local", "digits_model", ".parquet")


@pytest.mark.parametrize("engine", ["beam", "mapreduce"])
def test_allow_errors_and_chunk_size(tmp_path: Path, engine: str) -> None:
    case = make_case("digits_model", 300)
    output = tmp_path / "out.jsonl"
    run = batch("digits_model", case.write_jsonl(tmp_path / "in.jsonl"), output,
                *options(engine, "--allow-errors", "--chunk-size", "7"))
    assert run.returncode == 0, run.stderr
    expected = case.expected()
    assert run.summary() == (expected.rows, len(expected.ids), len(expected.errors), engine_name(engine))
    check_outputs(case, output, ordered=False)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("engine", ["beam", "mapreduce"])
def test_empty_input(tmp_path: Path, engine: str, fmt: str) -> None:
    source = tmp_path / f"in.{fmt}"
    source.write_text("")
    output = tmp_path / f"out.{fmt}"
    run = batch("iris_model", source, output, *ENGINES[engine])
    assert run.returncode == 0, run.stderr
    assert run.summary() == (0, 0, 0, engine_name(engine))
    if fmt == "csv":
        assert output.read_text().splitlines() == ["id,species"]
        assert errors_path(output).read_text().splitlines() == ["row,id,code,message"]
    else:
        assert output.read_text() == errors_path(output).read_text() == ""


@pytest.mark.parametrize("engine", ["beam", "mapreduce"])
def test_missing_input_and_unknown_model_exit_2(tmp_path: Path, engine: str) -> None:
    missing = batch("iris_model", tmp_path / "nowhere.jsonl", tmp_path / "out.jsonl", *ENGINES[engine])
    assert missing.returncode == 2
    assert "no such file" in missing.stderr and "nowhere.jsonl" in missing.stderr
    source = make_case("iris_model", 10).write_jsonl(tmp_path / "in.jsonl")
    unknown = batch("iris", source, tmp_path / "out.jsonl", *ENGINES[engine])
    assert unknown.returncode == 2
    assert "model 'iris'" in unknown.stderr
    assert all(model in unknown.stderr for model in MODELS)
    for run in (missing, unknown):
        assert "Traceback" not in run.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_model_from_the_working_directory_and_its_model_errors(tmp_path: Path, engine: str) -> None:
    # hostd runs in /work/main, so a config may name tests.support.toy (a module there), as with
    # `hostd run`; every engine's workers must find it. The toy model raises for `fail: true`.
    config = tmp_path / "host.yaml"
    config.write_text("models:\n  - class_path: tests.support.toy:EchoModel\n")
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"e{n}", "x": n, "fail": n % 10 == 3}) + "\n" for n in range(40)))
    output = tmp_path / "out.jsonl"
    run = batch("echo", source, output, *options(engine, "--chunk-size", "8"), config=config)
    assert run.returncode == 1, run.stderr
    assert run.summary() == (40, 36, 4, engine_name(engine))
    assert as_set(read_rows(output)) == as_set([{"id": f"e{n}", "prediction": {"y": 2.0 * n, "text": ""}}
                                                for n in range(40) if n % 10 != 3])
    assert {(row["row"], row["id"], row["code"]) for row in read_rows(errors_path(output))} == {
        (n + 1, f"e{n}", MODEL_ERROR) for n in range(40) if n % 10 == 3}
