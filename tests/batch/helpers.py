"""Shared by the `hostd batch` tests: realistic inputs with bad rows sprinkled in, running the real
console script, and reading what it wrote back.

A ``Case`` is a list of ``Entry``s, one per input line; from it come the input file (JSONL, CSV or
Parquet) and everything a user would check afterwards: which ids come out, in which order, and
which rows fail with which code and which field named in the message.

What hostd wrote is read back the same way whether it is a file (the local engine) or a directory
of part files committed with ``_SUCCESS`` (the engines that write their own output: beam,
mapreduce, spark, ray).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_diabetes, load_digits, load_iris

ROOT = Path(__file__).resolve().parents[2]
HOSTD = str(Path(sys.executable).with_name("hostd"))
CONFIG = ROOT / "host.yaml"
MODELS = ("iris_model", "digits_model", "diabetes_model")
INVALID, MODEL_ERROR = "INVALID_INPUT", "MODEL_ERROR"
SPECIES = {"Iris setosa", "Iris versicolor", "Iris virginica"}
OUTPUT_COLUMNS = {"iris_model": ["id", "species"], "digits_model": ["id", "digit", "probability"],
                  "diabetes_model": ["id", "progression", "std", "sample"]}
ERROR_COLUMNS = ["row", "id", "code", "message"]

SUMMARY = re.compile(r"^hostd batch: ([\d,]+) rows in, ([\d,]+) predicted, ([\d,]+) failed, [\d,]+ rows/s "
                     r"\([\d.]+ s, engine (\w+)\)$", re.MULTILINE)


# -- running the CLI ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        """stderr's lines as a terminal shows them: an engine's progress bar ends with a carriage
        return (Spark's), and what follows it starts a line of its own."""
        return re.split(r"\r\n?|\n", self.stderr)

    def summary(self) -> tuple[int, int, int, str]:
        """(rows in, predicted, failed, engine) from the summary line on stderr."""
        found = SUMMARY.findall("\n".join(self.lines))
        assert len(found) == 1, f"no single summary line in stderr:\n{self.stderr}"
        rows_in, predicted, failed, engine = found[0]
        return int(rows_in.replace(",", "")), int(predicted.replace(",", "")), int(failed.replace(",", "")), engine


def hostd(*args: str | Path, timeout: float = 100, env: dict[str, str] | None = None) -> Run:
    """The console script, run in the repository without HOSTD_ variables; ``env`` adds variables."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("HOSTD_")}
    result = subprocess.run([HOSTD, *map(str, args)], cwd=ROOT, env=environment | (env or {}), capture_output=True,
                            text=True, timeout=timeout)
    return Run(result.returncode, result.stdout, result.stderr)


def batch(model: str, source: Path | str, output: Path, *options: str | Path, config: Path = CONFIG,
          timeout: float = 100, env: dict[str, str] | None = None) -> Run:
    """``hostd batch CONFIG --model MODEL --input SOURCE --output OUTPUT [options]``."""
    return hostd("batch", config, "--model", model, "--input", source, "--output", output, *options,
                 timeout=timeout, env=env)


def errors_path(output: Path) -> Path:
    """Where hostd puts failed rows by default: out.jsonl -> out.errors.jsonl (a file or a directory,
    as the output is)."""
    return output.with_name(f"{output.stem}.errors{output.suffix}")


# -- inputs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One input line: a record (``data``, which may carry an ``id``) or a line that is no record.

    ``code`` is the error code the row should get (None: it should be predicted), ``says`` a piece
    of the error message (the field's name, or why the line is not a record)."""

    line: str
    data: dict[str, Any] | None = None
    code: str | None = None
    says: str = ""

    @property
    def blank(self) -> bool:
        return not self.line.strip()

    @property
    def id(self) -> Any:
        return None if self.data is None else self.data.get("id")


def good(data: dict[str, Any]) -> Entry:
    return Entry(json.dumps(data), data)


def bad(data: dict[str, Any], says: str, code: str = INVALID) -> Entry:
    return Entry(json.dumps(data), data, code, says)


def not_a_record(line: str, says: str) -> Entry:
    return Entry(line, None, INVALID, says)


@dataclass(frozen=True)
class Expected:
    rows: int
    ids: list[Any]  # output ids in input order
    errors: dict[int, tuple[Any, str, str]]  # row -> (id, code, a piece of the message)
    inputs: dict[Any, dict[str, Any]] = field(repr=False)  # output id -> the record's data


@dataclass(frozen=True)
class Case:
    model: str
    entries: tuple[Entry, ...]

    def records(self) -> Iterator[tuple[int, Entry]]:
        """(row number, entry) for every entry that is a record: blank lines are not counted."""
        row = 0
        for entry in self.entries:
            if not entry.blank:
                row += 1
                yield row, entry

    def expected(self) -> Expected:
        ids, errors, inputs = [], {}, {}
        for row, entry in self.records():
            if entry.code is None:
                key = entry.id if entry.id is not None else row
                ids.append(key)
                inputs[key] = {name: value for name, value in (entry.data or {}).items() if name != "id"}
            else:
                errors[row] = (entry.id, entry.code, entry.says)
        return Expected(sum(1 for _ in self.records()), ids, errors, inputs)

    def only(self, keep: Callable[[Entry], bool]) -> Case:
        return replace(self, entries=tuple(entry for entry in self.entries if keep(entry)))

    def write_jsonl(self, path: Path) -> Path:
        path.write_text("".join(f"{entry.line}\n" for entry in self.entries))
        return path

    def columns(self) -> list[str]:
        return ["id", *FEATURES[self.model]]

    def tabular(self) -> Case:
        """The records a CSV or Parquet file can hold: objects with no unknown column (blank
        lines, non-JSON lines and arrays have no place in a table)."""
        return self.only(lambda entry: entry.data is not None and set(entry.data) <= set(self.columns()))

    def write_csv(self, path: Path) -> Path:
        """Cells as a user's CSV has them: numbers as text, the 8x8 image as JSON, a missing field empty."""
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.columns())
            for _, entry in self.tabular().records():
                assert entry.data is not None
                writer.writerow([_cell(entry.data.get(column)) for column in self.columns()])
        return path

    def typed(self) -> Case:
        """The records a Parquet file can hold: a table's records with no text where numbers go."""
        return self.tabular().only(lambda entry: not any(_has_text(value) for name, value in (entry.data or {}).items()
                                                         if name != "id"))

    def write_parquet(self, path: Path) -> Path:
        """Typed columns; a missing field is null."""
        rows = [entry.data for _, entry in self.typed().records()]
        pq.write_table(pa.Table.from_pylist([{column: row.get(column) for column in self.columns()}
                                             for row in rows if row is not None]), path)
        return path


def _has_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and any(map(_has_text, value)))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


FEATURES = {"iris_model": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
            "digits_model": ["image"],
            "diabetes_model": ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]}


@cache
def _dataset(model: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """The scikit-learn dataset a model was trained on, as input records, with its targets."""
    if model == "iris_model":
        iris = load_iris()
        names = [f"Iris {name}" for name in iris.target_names]
        return ([dict(zip(FEATURES[model], map(float, row), strict=True)) for row in iris.data],
                [names[target] for target in iris.target])
    if model == "digits_model":
        digits = load_digits()
        return [{"image": image.astype(int).tolist()} for image in digits.images], digits.target.tolist()
    diabetes = load_diabetes(scaled=False)
    return ([dict(zip(FEATURES[model], map(float, row), strict=True)) for row in diabetes.data],
            diabetes.target.tolist())


def target(model: str, data: dict[str, Any]) -> Any:
    """The dataset's label for an input record (None if it is not one of the dataset's rows)."""
    records, targets = _dataset(model)
    try:
        return targets[records.index(data)]
    except ValueError:
        return None


def _bad_entries(model: str, example: dict[str, Any]) -> list[Entry]:
    """Rows a user's file really has: not JSON, not an object, a wrong type, a missing field,
    a value out of range, an unknown field."""
    values = [value for name, value in example.items() if name != "id"]
    line = json.dumps(example)
    common = [not_a_record(line[: len(line) // 2], "not valid JSON"),
              not_a_record(json.dumps(values), "not an object"),
              not_a_record("null", "not an object"),
              bad({**example, "id": "bad-extra", "colour": "blue"}, "colour")]
    missing = {"iris_model": "petal_width", "digits_model": "image", "diabetes_model": "s5"}[model]
    common.append(bad({key: value for key, value in example.items() if key != missing} | {"id": "bad-missing"},
                      missing))
    if model == "iris_model":
        return [*common,
                bad({**example, "id": "bad-type", "sepal_length": "long"}, "sepal_length"),
                bad({**example, "id": "bad-range", "sepal_width": 50.0}, "sepal_width"),
                bad({**example, "id": "bad-negative", "petal_length": -1.0}, "petal_length")]
    if model == "digits_model":
        image = example["image"]
        hot = [row[:] for row in image]
        hot[3][4] = 17
        return [*common,
                bad({"id": "bad-type", "image": [[str(pixel) + "px" for pixel in row] for row in image]}, "image"),
                bad({"id": "bad-range", "image": hot}, "image"),
                bad({"id": "bad-shape", "image": image[:7]}, "image")]
    return [*common,
            bad({**example, "id": "bad-type", "bmi": "high"}, "bmi"),
            bad({**example, "id": "bad-range", "age": 120.0}, "age"),
            bad({**example, "id": "bad-sex", "sex": 3.0}, "sex")]


def make_case(model: str, count: int, *, some_without_id: bool = True) -> Case:
    """``count`` records from the model's dataset (cycled), ids ``<model>-<n>`` (every 97th without
    an id unless ``some_without_id`` is false), with the bad rows spread over the file, one of them
    first and one last, and a few blank lines that are not records."""
    records, _ = _dataset(model)
    prefix = model.split("_")[0]
    entries = []
    for index in range(count):
        data = dict(records[index % len(records)])
        if not (some_without_id and index % 97 == 50):
            data = {"id": f"{prefix}-{index:05d}", **data}
        entries.append(good(data))
    bads = _bad_entries(model, {"id": "x", **records[0]})
    step = count // len(bads)
    for position, entry in reversed(list(enumerate(bads))):
        entries.insert(position * step, entry)
    first_field = FEATURES[model][0]
    entries.append(bad({"id": "bad-last", **{key: value for key, value in records[1].items() if key != first_field}},
                       first_field))
    for position, blank in ((count // 3, ""), (count // 2, "   \t"), (len(entries), "")):
        entries.insert(position, Entry(blank))
    return Case(model, tuple(entries))


# -- outputs --------------------------------------------------------------------------------------

SUCCESS = "_SUCCESS"  # the marker an engine that writes its own output commits with, last


def parts(path: Path) -> list[Path]:
    """The files that hold what hostd wrote at ``path``: the file itself, or a directory's data part
    files in name order (names starting with ``_`` or ``.`` are markers and checksums, not data)."""
    if not path.is_dir():
        return [path]
    return sorted(part for part in path.iterdir() if part.is_file() and not part.name.startswith(("_", ".")))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL, CSV or Parquet file hostd wrote, or of a directory of such part files,
    concatenated (CSV cells are strings). The format is the extension of ``path`` itself: a part's
    name may have another (Spark's JSONL parts end in .txt) or none (mapreduce's)."""
    rows: list[dict[str, Any]] = []
    for part in parts(path):
        if path.suffix == ".jsonl":
            rows += [json.loads(line) for line in part.read_text().splitlines()]
        elif path.suffix == ".csv":
            with part.open(newline="") as handle:
                rows += list(csv.DictReader(handle))
        else:
            rows += pq.read_table(part).to_pylist()
    return rows


def read_results(output: Path, errors: Path | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(output rows, error rows) hostd wrote to ``output`` and ``errors`` (default: errors_path(output)).
    If ``errors`` is ``output`` (mapreduce writes failed rows beside the predictions), its rows are
    split: an error row has exactly the error columns."""
    errors = errors or errors_path(output)
    if errors != output:
        return read_rows(output), read_rows(errors)
    rows = read_rows(output)
    return ([row for row in rows if set(row) != set(ERROR_COLUMNS)],
            [row for row in rows if set(row) == set(ERROR_COLUMNS)])


def header(path: Path) -> list[str]:
    """The columns of a CSV or Parquet file hostd wrote, or of every part of such a directory (they
    must agree, and there must be one)."""
    found = set()
    for part in parts(path):
        if path.suffix == ".csv":
            with part.open(newline="") as handle:
                found.add(tuple(next(csv.reader(handle))))
        else:
            found.add(tuple(pq.read_schema(part).names))
    assert len(found) == 1, f"{path}: the parts' columns are {found or 'nowhere: no part'}"
    return list(found.pop())


def check_outputs(case: Case, output: Path, errors: Path | None = None, *, ordered: bool = True,
                  text: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Assert the output and errors (files or directories, as ``read_results`` reads them) hold
    exactly what ``case`` should give: every good row's id (in input order if ``ordered``), every
    bad row with its row number, id, code and a message that names the field. ``text``: the files
    are CSV, so every value is a string."""
    expected = case.expected()
    outputs, failures = read_results(output, errors)

    def as_read(value: Any) -> Any:
        return ("" if value is None else str(value)) if text else value

    ids = [row["id"] for row in outputs]
    wanted = [as_read(key) for key in expected.ids]
    if ordered:
        assert ids == wanted
    else:
        assert sorted(map(repr, ids)) == sorted(map(repr, wanted))
    got = {int(row["row"]): (row["id"], row["code"]) for row in failures}
    assert len(got) == len(failures), "a row is in the errors twice"
    assert got == {row: (as_read(key), code) for row, (key, code, _) in expected.errors.items()}
    for failure in failures:
        says = expected.errors[int(failure["row"])][2]
        assert says in failure["message"], failure
    assert len(outputs) + len(failures) == expected.rows
    return outputs, failures


def prediction(row: dict[str, Any]) -> dict[str, Any]:
    """The model's output in an output row: JSONL nests it, CSV and Parquet have a column per field."""
    return row["prediction"] if "prediction" in row else {key: value for key, value in row.items() if key != "id"}


def by_input(case: Case, outputs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each output row's prediction keyed by the input record it came from (JSON), to compare runs
    whose ids differ; a record that is in the input twice must get the same prediction."""
    inputs = {str(key): data for key, data in case.expected().inputs.items()}
    found: dict[str, dict[str, Any]] = {}
    for row in outputs:
        key = json.dumps(inputs[str(row["id"])], sort_keys=True)
        assert found.setdefault(key, prediction(row)) == prediction(row), key
    return found


def check_predictions(case: Case, outputs: list[dict[str, Any]]) -> None:
    """Predictions a user would believe: values of the right kind, mostly the dataset's own labels."""
    inputs = {str(key): data for key, data in case.expected().inputs.items()}
    right = 0
    for row in outputs:
        predicted = prediction(row)
        label = target(case.model, inputs[str(row["id"])])
        if case.model == "iris_model":
            assert set(predicted) == {"species"}
            assert predicted["species"] in SPECIES
            right += predicted["species"] == label
        elif case.model == "digits_model":
            assert set(predicted) == {"digit", "probability"}
            assert 0 <= int(predicted["digit"]) <= 9
            assert 0.0 <= float(predicted["probability"]) <= 1.0
            right += int(predicted["digit"]) == label
        else:
            assert set(predicted) == {"progression", "std", "sample"}
            values = {name: float(value) for name, value in predicted.items()}
            assert 0 < values["progression"] < 400
            assert values["std"] >= 0
            right += 1
    assert right >= 0.9 * len(outputs)
