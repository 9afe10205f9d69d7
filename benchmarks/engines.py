"""Batch at scale (issue 19): the same 1,000,000 iris rows through every `hostd batch` engine, against
the numpy floor (benchmarks/batch.py's: orjson, numpy and the estimator in one process).

The clusters are tests/batch/clusters.py's (a Spark master and two 1-core workers; a Ray head of 2
CPUs), on 127.0.0.1. Each engine runs through the real console script, timed from spawn to exit (a JVM, a Ray or a Beam
runner started on the way included: that is what a user waits for), with its output checked to hold
every row. Peak memory is the largest sum of RSS over the process tree, sampled every 0.2 s: the
hostd process, everything it started (Spark's JVM and Python workers, Ray's raylet and actors, Beam's
workers, mrjob's mappers) and, for the standalone cluster, the master's and workers' trees as well.

    python -m benchmarks.engines                                  # 1,000,000 rows
    HOSTD_BENCH_ENGINE_ROWS=100000 python -m benchmarks.engines   # a quick look
    python -m benchmarks --only engines
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks import batch as floor_batch
from benchmarks.common import ROOT
from tests.batch.clusters import ray_head, spark_standalone  # the clusters tests/batch/test_clusters.py uses

ROWS = int(os.environ.get("HOSTD_BENCH_ENGINE_ROWS", "1000000"))
#: name -> (engine options, which cluster it needs). Two of everything: this machine has 2 cores.
RUNS: dict[str, tuple[list[str], str | None]] = {
    "local_workers_1": (["--engine", "local"], None),
    "local_workers_2": (["--engine", "local", "--workers", "2"], None),
    "spark_local_2": (["--engine", "spark", "--", "--master", "local[2]"], None),
    "spark_standalone_2x1": (["--engine", "spark", "--", "--master", "{spark}"], "spark"),
    "ray_2_actors": (["--engine", "ray", "--workers", "2", "--", "--address", "{ray}"], "ray"),
    "beam_direct_2": (["--engine", "beam", "--workers", "2"], None),
    "mapreduce_local": (["--engine", "mapreduce", "--", "-r", "local"], None),
}


def engines(seconds: int, workdir: Path, rows: int = ROWS, only: list[str] | None = None) -> dict[str, Any]:
    """Rows/s and peak process-tree memory of the floor and of each engine on ``rows`` iris rows.
    ``seconds`` (the suite's run length) is not used: a run scores the whole file."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp)
        source = floor_batch.write_rows(folder / "iris.jsonl", rows)
        config = folder / "host.yaml"
        config.write_text(yaml.safe_dump({"models": [{"class_path": "iris_model.model:IrisModel"}],
                                          "log_level": "warning"}))
        report: dict[str, Any] = {"rows": rows}
        with _peak_memory(list) as peak:
            wall, _, scoring = floor_batch._floor(source, folder / "floor.jsonl", rows)
        report["floor"] = {"rows_per_s": round(rows / wall), "scoring_rows_per_s": round(scoring),
                           "peak_mib": round(peak[0] / 2**20)}
        for name, (options, cluster) in RUNS.items():
            if only and name not in only:
                continue
            with _cluster(cluster, folder) as (values, extra_pids):
                args = [option.format(**values) for option in options]
                env = {**os.environ, **values.get("env", {})}
                output = folder / f"{name}.jsonl"
                with _peak_memory(lambda: list(map(psutil.Process, extra_pids))) as peak:
                    started = time.perf_counter()
                    _hostd(config, source, output, args, env)
                    wall = time.perf_counter() - started
                _check(output, rows)
                report[name] = {"rows_per_s": round(rows / wall), "seconds": round(wall, 1),
                                "peak_mib": round(peak[0] / 2**20),
                                "ratio_to_floor": round(rows / wall / report["floor"]["rows_per_s"], 3)}
                print(f"{name}: {report[name]}", file=sys.stderr, flush=True)
    return report


@contextmanager
def _cluster(kind: str | None, folder: Path) -> Iterator[tuple[dict[str, Any], list[int]]]:
    if kind == "spark":
        (folder / "spark").mkdir()
        with spark_standalone(folder / "spark") as spark:
            yield {"spark": spark.master}, [process.pid for process in spark.processes]
    elif kind == "ray":
        (folder / "ray").mkdir()
        with tempfile.TemporaryDirectory(prefix="ray-") as sessions, ray_head(folder / "ray", Path(sessions)) as ray:
            yield {"ray": ray.address, "env": ray.env}, [ray.head.pid]  # `ray start --block`: Ray's parent
    else:
        with nullcontext():
            yield {}, []


def _hostd(config: Path, source: Path, output: Path, args: list[str], env: dict[str, str]) -> None:
    split = args.index("--") if "--" in args else len(args)
    command = [str(Path(sys.executable).with_name("hostd")), "batch", str(config), "--model", "iris_model",
               "--input", str(source), "--output", str(output), "--no-progress", *args[:split], *args[split:]]
    done = subprocess.run(command, cwd=ROOT, env={k: v for k, v in env.items() if not k.startswith("HOSTD_")},
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"hostd batch {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def _check(output: Path, rows: int) -> None:
    files = [output] if output.is_file() else [part for part in output.iterdir()
                                                if not part.name.startswith(("_", "."))]
    written = sum(sum(1 for line in part.open("rb") if line.strip()) for part in files)
    if written != rows:
        raise RuntimeError(f"{output} holds {written:,} predictions, not {rows:,}")


@contextmanager
def _peak_memory(roots: Callable[[], list[psutil.Process]]) -> Iterator[list[float]]:
    """[the largest RSS sum seen over this process's descendants (not itself: it only waits), and
    ``roots()`` and theirs], sampled every 0.2 s."""
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            seen: set[int] = set()
            total = 0
            for root in [psutil.Process(), *roots()]:
                try:
                    tree = [*([root] if root.pid != os.getpid() else []), *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                for process in tree:
                    if process.pid in seen:
                        continue
                    seen.add(process.pid)
                    try:
                        total += process.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
            peak[0] = max(peak[0], total)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


if __name__ == "__main__":
    print(json.dumps(engines(0, Path(tempfile.gettempdir()), only=sys.argv[1:] or None), indent=2))
