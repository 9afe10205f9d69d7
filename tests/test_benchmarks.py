"""The load-test suite itself runs (a short WebSocket and ZeroMQ run; no timing is asserted), and
`--vs all` compares and tabulates what it measured (no peer is installed here)."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

from benchmarks.common import Result
from benchmarks.peers import Peer
from benchmarks.peers.compare import phases, ratio
from benchmarks.peers.table import markdown

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


def run(server: str, concurrency: int, rps: float, p50: float | None, p99: float | None, errors: int = 0) -> Result:
    return Result(server, "http", concurrency, rps, p50, p99, errors, "wrk")


def test_hostd_is_ahead_only_when_better_in_throughput_and_both_latencies() -> None:
    ahead = ratio(run("hostd", 16, 3000, 2.0, 6.0), run("litserve", 16, 1000, 8.0, 30.0))
    assert ahead == {"server": "hostd", "vs": "litserve", "transport": "http", "concurrency": 16,
                     "rps_ratio": 3.0, "p50_ratio": 0.25, "p99_ratio": 0.2, "hostd_ahead": True}
    slower_tail = ratio(run("hostd", 16, 3000, 2.0, 40.0), run("litserve", 16, 1000, 8.0, 30.0))
    assert slower_tail["p99_ratio"] == 1.33 and not slower_tail["hostd_ahead"]
    # A ratio to Ray Serve's few requests/s keeps three significant digits, a tiny one too.
    assert ratio(run("hostd", 64, 4567, 0.5, 1.0), run("ray-serve", 64, 7, 900.0, 9000.0))["rps_ratio"] == 652.0
    assert ratio(run("hostd", 64, 4567, 0.5, 1.0), run("ray-serve", 64, 7, 900.0, 9000.0))["p50_ratio"] == 0.000556
    unmeasured = ratio(run("hostd", 1, 100, None, None), run("bentoml", 1, 100, 1.0, 2.0))
    assert unmeasured["p50_ratio"] is None and not unmeasured["hostd_ahead"]


def test_a_busy_peer_gets_a_phase_of_its_own_after_the_shared_one() -> None:
    def peer(name: str, own_phase: bool = False) -> Peer:
        return Peer(name, "1", "POST /", [], lambda port: nullcontext(("", b"")), own_phase)

    ray, lit, bento = peer("ray-serve", own_phase=True), peer("litserve"), peer("bentoml")
    assert phases([ray, lit, bento]) == [("shared", [lit, bento]), ("ray-serve", [ray])]
    assert phases([ray]) == [("shared", []), ("ray-serve", [ray])]  # hostd is measured in the shared one anyway


def test_the_markdown_tables_name_every_server_ratio_and_skipped_peer() -> None:
    results = [run("hostd", 1, 1500, 0.6, 1.2), run("litserve", 1, 500, 1.9, 3.1),
               run("hostd", 16, 3000, 5.0, 9.0), run("litserve", 16, 900, 17.0, 8.0, errors=12)]
    ratios = [ratio(results[0], results[1]), ratio(results[2], results[3])]
    skipped = [{"peer": "bentoml", "skipped": "did not start: RuntimeError: exited with code 1"}]
    names = {"hostd": "hostd 0.1.0", "litserve": "litserve 0.2.19", "bentoml": "bentoml 1.4.40"}
    assert markdown(results, ratios, skipped, names, [1, 16]).splitlines() == [
        "| server | 1 connection | 16 connections |",
        "|---|---:|---:|",
        "| hostd 0.1.0 | 1,500 req/s, p50 0.60 ms, p99 1.20 ms | 3,000 req/s, p50 5.00 ms, p99 9.00 ms |",
        "| litserve 0.2.19 | 500 req/s, p50 1.90 ms, p99 3.10 ms | "
        "900 req/s, p50 17.00 ms, p99 8.00 ms, **12 errors** |",
        "",
        "| hostd / peer (req/s, p50, p99) | 1 connection | 16 connections |",
        "|---|---:|---:|",
        "| litserve 0.2.19 | 3.0x, 0.316x, 0.387x | **3.33x, 0.294x, 1.12x** |",  # bold: hostd not ahead
        "",
        "- bentoml 1.4.40: not measured, did not start: RuntimeError: exited with code 1",
    ]


def test_a_peer_in_its_own_phase_is_compared_with_the_hostd_beside_it() -> None:
    results = [run("hostd", 1, 1500, 0.6, 1.2), run("hostd (ray-serve phase)", 1, 1400, 0.7, 1.3),
               run("ray-serve", 1, 50, 19.0, 40.0)]
    text = markdown(results, [ratio(results[1], results[2])], [], {"ray-serve": "ray-serve 2.60.0"}, [1])
    assert "| hostd (ray-serve phase) | 1,400 req/s, p50 0.70 ms, p99 1.30 ms |" in text
    assert "| ray-serve 2.60.0 (vs hostd (ray-serve phase)) | 28.0x, 0.0368x, 0.0325x |" in text
