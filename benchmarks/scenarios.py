"""Two questions a throughput table does not answer.

- Overload: offered load at 4x what a model admits. Does hostd answer OVERLOADED (HTTP 503) at
  once, keep its memory bounded and keep admitted requests fast, instead of timing out?
- Process workers: does a GIL-bound model with ``workers: {kind: process, count: 2}`` use both
  cores, where two threads cannot?
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.common import free_port, percentile, start_hostd
from benchmarks.oip_infer import wrk

GIL_MODEL = {"class_path": "benchmarks.toys:GilBoundModel", "batching": {"max_batch_size": 1}}
BODY = b'{"n": 30000}'
SLEEPY_BODY = b'{"ms": 2}'


def overload(seconds: int, workdir: Path) -> dict[str, Any]:
    """A model with one worker, 2 ms a call, batching off, max_pending 4, driven by 16 connections:
    4x the requests it admits at once. Expect 503s at once, no 504s, flat memory, and admitted
    requests waiting at most ~max_pending calls (8 ms) instead of queueing without bound."""
    admitted, connections = 4, 16
    http_port = free_port()
    model = {"class_path": "benchmarks.toys:SleepyModel", "batching": {"max_batch_size": 1},
             "workers": {"count": 1}, "max_pending": admitted, "timeout_ms": 1000}
    url = f"http://127.0.0.1:{http_port}/api/models/sleepy/prediction"
    with start_hostd({"http": {"port": http_port}}, [model]) as proc:
        quiet = _probe(url, seconds=2)  # one client alone: the normal latency
        rss_before = _rss_mb(proc.pid)
        peak = [rss_before]
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, peak, seconds + 1), daemon=True)
        sampler.start()
        probe: dict[str, Any] = {}
        prober = threading.Thread(target=lambda: probe.update(_probe(url, seconds)), daemon=True)
        prober.start()
        statuses: dict[int, int] = {}
        load = wrk(url, SLEEPY_BODY, connections, seconds, workdir, server="hostd", statuses=statuses)
        prober.join()
        sampler.join()
        alive = proc.poll() is None
    return {"admitted_at_once": admitted, "connections": connections, "seconds": seconds, "call_ms": 2,
            "responses_per_s": round(load.rps), "statuses": statuses, "daemon_alive": alive,
            "rss_mb": {"before": rss_before, "peak": max(peak)},
            "admitted_latency_ms": {"quiet_p50": quiet["p50_ms"], "overloaded_p50": probe["p50_ms"],
                                    "overloaded_p99": probe["p99_ms"]},
            "probe_statuses": probe["statuses"]}


def process_workers(seconds: int, workdir: Path) -> dict[str, Any]:
    """The GIL-bound model with two threads, then two processes, 8 connections each."""
    results = {}
    for kind in ("thread", "process"):
        http_port = free_port()
        model = {**GIL_MODEL, "workers": {"kind": kind, "count": 2}, "max_pending": 64}
        url = f"http://127.0.0.1:{http_port}/api/models/gil_bound/prediction"
        with start_hostd({"http": {"port": http_port}}, [model]) as proc:
            tree = psutil.Process(proc.pid)
            before = _cpu_seconds(tree)
            load = wrk(url, BODY, 8, seconds, workdir, server=f"hostd ({kind} workers)")
            cores = (_cpu_seconds(tree) - before) / seconds
        results[kind] = {"rps": round(load.rps), "p50_ms": load.p50_ms, "p99_ms": load.p99_ms,
                         "errors": load.errors, "cores_used": round(cores, 2)}
    results["process_vs_thread"] = round(results["process"]["rps"] / results["thread"]["rps"], 2)
    return results


def _probe(url: str, seconds: float, body: bytes = SLEEPY_BODY) -> dict[str, Any]:
    """One client sending one request at a time: latency of those admitted (200), statuses seen."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            status = client.post(url, content=body, headers={"content-type": "application/json"}).status_code
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    return {"p50_ms": _round(percentile(latencies, 0.5)), "p99_ms": _round(percentile(latencies, 0.99)),
            "statuses": statuses}


def _round(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def _rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    return round(sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20, 1)


def _sample_rss(pid: int, peak: list[float], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak.append(_rss_mb(pid))
        time.sleep(0.25)


def _cpu_seconds(process: psutil.Process) -> float:
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        times = member.cpu_times()
        total += times.user + times.system
    return total
