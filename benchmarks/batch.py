"""Batch scoring (issue 16): `hostd batch` with the local engine against the in-process floor.

The floor is the least any batch scorer of this file must do, in one process: ``orjson.loads`` per
line, the rows as a numpy array, the iris estimator's ``predict`` per chunk, and each prediction
written as an ``orjson`` line in the same shape hostd writes (``{"id": n, "prediction": {...}}``).
hostd runs through its real console script (``hostd batch --engine local``), so it also pays for
what the floor skips: validating each row against the model's pydantic schema, the kernel's
failure isolation, the output schema check and the errors file.

hostd runs three ways: ``--engine local --workers 1``, the plain command (the defaults: the same
engine and worker count, as a check) and ``--workers 2``. All are timed from spawning the process to
its exit (interpreter start, imports and loading the estimator included, for the floor too), on the
same file in the same run, taking turns; each figure is the median of ``rounds``. Per run:
``rows_per_s`` (the headline), ``rows_per_cpu_s`` (user + system time of the process and its
workers, which says more than the wall time on a busy machine) and ``scoring_rows_per_s`` (what the
process reports itself, start-up excluded), and for hostd each as a ratio to the floor's.

    python -m benchmarks.batch                          # 1,000,000 rows, one round
    HOSTD_BENCH_BATCH_ROWS=100000 HOSTD_BENCH_BATCH_ROUNDS=3 python -m benchmarks.batch
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import yaml

from benchmarks.common import ROOT

ROWS = int(os.environ.get("HOSTD_BENCH_BATCH_ROWS", "1000000"))
ROUNDS = int(os.environ.get("HOSTD_BENCH_BATCH_ROUNDS", "1"))
CHUNK = 1024  # hostd batch's default --chunk-size
#: hostd runs compared with the floor: name -> extra CLI arguments.
HOSTD_RUNS = {"local_workers_1": ["--engine", "local", "--workers", "1"], "default": [],
              "local_workers_2": ["--engine", "local", "--workers", "2"]}
RATIOS = {"rows_per_s": "ratio_to_floor", "rows_per_cpu_s": "cpu_ratio_to_floor",
          "scoring_rows_per_s": "scoring_ratio_to_floor"}
SUMMARY = re.compile(r"([\d,]+) rows in, ([\d,]+) predicted, ([\d,]+) failed, ([\d,]+) rows/s")

FLOOR = """
import sys, time
import numpy as np, orjson
from iris_model.model import FEATURES, load_parameters

source, target, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
estimator = load_parameters()
started = time.perf_counter()
rows = 0
with open(source, "rb") as lines, open(target, "wb") as out:
    def flush(buffer):
        global rows
        for label in estimator.predict(np.array(buffer, dtype=np.float64)).tolist():
            rows += 1
            out.write(orjson.dumps({"id": rows, "prediction": {"species": label}}, option=orjson.OPT_APPEND_NEWLINE))
    buffer = []
    for line in lines:
        data = orjson.loads(line)
        buffer.append([data[name] for name in FEATURES])
        if len(buffer) == chunk:
            flush(buffer)
            buffer = []
    if buffer:
        flush(buffer)
print(orjson.dumps({"rows": rows, "scoring_s": time.perf_counter() - started}).decode())
"""


def batch(seconds: int, workdir: Path, rows: int = ROWS, rounds: int = ROUNDS) -> dict[str, Any]:
    """Rows/s of the floor and of each hostd run, and hostd's ratio to the floor. ``seconds`` (the
    suite's run length) is not used: a run scores a whole file of ``rows`` rows."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp)
        source = write_rows(folder / "iris.jsonl", rows)
        config = folder / "host.yaml"
        config.write_text(yaml.safe_dump({"models": [{"class_path": "iris_model.model:IrisModel"}],
                                          "log_level": "warning"}))
        runs: dict[str, list[tuple[float, float, float]]] = {"floor": [], **{name: [] for name in HOSTD_RUNS}}
        for _ in range(rounds):
            runs["floor"].append(_floor(source, folder / "floor.jsonl", rows))
            for name, args in HOSTD_RUNS.items():
                runs[name].append(_hostd(config, source, folder / f"{name}.jsonl", args, rows))
    return _report(rows, runs)


def write_rows(path: Path, rows: int) -> Path:
    """``rows`` iris measurements as JSONL, spread over the schema's ranges (so all three species)."""
    pick = random.Random(16)
    with path.open("wb") as out:
        for _ in range(rows):
            out.write(orjson.dumps({"sepal_length": round(pick.uniform(4.3, 7.9), 1),
                                    "sepal_width": round(pick.uniform(2.0, 4.4), 1),
                                    "petal_length": round(pick.uniform(1.0, 6.9), 1),
                                    "petal_width": round(pick.uniform(0.1, 2.5), 1)}, option=orjson.OPT_APPEND_NEWLINE))
    return path


def _floor(source: Path, target: Path, rows: int) -> tuple[float, float, float]:
    """(wall seconds from spawn, CPU seconds, the floor's own rows/s after loading the estimator)."""
    with _timed() as spent:
        done = subprocess.run([sys.executable, "-c", FLOOR, str(source), str(target), str(CHUNK)], cwd=ROOT,
                              check=True, capture_output=True, text=True, timeout=3600)
    result = json.loads(done.stdout)
    if result["rows"] != rows:
        raise RuntimeError(f"the floor wrote {result['rows']} rows of {rows}")
    return spent[0], spent[1], rows / result["scoring_s"]


def _hostd(config: Path, source: Path, target: Path, args: list[str], rows: int) -> tuple[float, float, float]:
    """(wall seconds from spawn, CPU seconds of it and its workers, the rows/s its summary line reports)."""
    command = [str(Path(sys.executable).with_name("hostd")), "batch", str(config), "--model", "iris_model",
               "--input", str(source), "--output", str(target), "--no-progress", *args]
    env = {name: value for name, value in os.environ.items() if not name.startswith("HOSTD_")}
    with _timed() as spent:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    found = SUMMARY.search(done.stderr)
    if done.returncode != 0 or found is None or int(found[2].replace(",", "")) != rows:
        raise RuntimeError(f"hostd batch {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    if sum(1 for _ in target.open("rb")) != rows:
        raise RuntimeError(f"hostd batch {' '.join(args)} did not write {rows} predictions")
    return spent[0], spent[1], float(found[4].replace(",", ""))


@contextmanager
def _timed() -> Iterator[list[float]]:
    """[wall, CPU] seconds of the block's child processes (CPU: user + system, grandchildren too,
    which on a busy machine says more than the wall time does)."""
    spent: list[float] = []
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    yield spent
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent += [time.perf_counter() - started,
              after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime]


def _report(rows: int, runs: dict[str, list[tuple[float, float, float]]]) -> dict[str, Any]:
    """Per run: rows/s from spawn to exit (the headline), rows per CPU-second, and the scoring rate
    the process reports itself (start-up excluded); each hostd figure also as a ratio to the floor's."""
    figures = {name: {"rows_per_s": rows / _median(found, 0), "rows_per_cpu_s": rows / _median(found, 1),
                      "scoring_rows_per_s": _median(found, 2)} for name, found in runs.items()}
    floor = figures["floor"]
    report: dict[str, Any] = {"rows": rows, "rounds": len(runs["floor"]),
                              "floor": {key: round(value) for key, value in floor.items()}}
    for name in HOSTD_RUNS:
        ours = figures[name]
        report[name] = {**{key: round(value) for key, value in ours.items()},
                        **{RATIOS[key]: round(ours[key] / floor[key], 3) for key in ours}}
    return report


def _median(found: list[tuple[float, float, float]], index: int) -> float:
    return statistics.median(run[index] for run in found)


if __name__ == "__main__":
    print(json.dumps(batch(0, Path(tempfile.gettempdir())), indent=2))
