"""The load-test suite itself runs (a short WebSocket and ZeroMQ run; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_suite_runs_and_writes_its_results(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "ws,zmq", "--seconds", "1",
                          "--in-flight", "20", "--results", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    (path,) = tmp_path.glob("*.json")
    report = json.loads(path.read_text())
    runs = {(r["transport"], r["concurrency"]): r for r in report["results"]}
    assert set(runs) == {("ws", 1), ("ws", 20), ("zmq", 1), ("zmq", 20)}
    for run in runs.values():
        assert run["rps"] > 0 and run["errors"] == 0, run
        # Latencies were measured (a run that timed nothing has none); no bound on them: not a benchmark.
        assert run["p50_ms"] is not None and run["p99_ms"] is not None and run["p50_ms"] > 0, run
    assert "requests/s" in out.stdout and str(path) in out.stdout
