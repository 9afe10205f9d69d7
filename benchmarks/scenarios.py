"""Two questions a throughput table does not answer.

- Overload: offered load at 4x what a model admits. Does hostd answer OVERLOADED (HTTP 503) at
  once and cheaply, keep its goodput near capacity, its memory bounded and admitted requests as
  fast as at capacity, instead of timing out?
- Process workers: does a GIL-bound model with ``workers: {kind: process, count: 2}`` use both
  cores, where two threads cannot?
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from benchmarks.common import IRIS, free_port, percentile, start_hostd
from benchmarks.oip_infer import wrk

GIL_MODEL = {"class_path": "benchmarks.toys:GilBoundModel", "batching": {"max_batch_size": 1}}
BODY = b'{"n": 30000}'
SLEEPY_BODY = b'{"ms": 2}'
OVERLOAD = 4  # clients offered per request a model admits at once
FLOOD = 16  # the adversarial run's case: max_pending 8, 128 connections


def overload(seconds: int, workdir: Path) -> dict[str, Any]:
    """Each model at capacity (as many clients as it admits at once), then under 4x that: goodput
    (200s a second) against capacity, and the admitted latency at capacity against overloaded."""
    sleepy = {"class_path": "benchmarks.toys:SleepyModel", "batching": {"max_batch_size": 1},
              "workers": {"count": 1}, "max_pending": 4, "timeout_ms": 1000}
    iris = {"class_path": "iris_model.model:IrisModel", "max_pending": 8}
    return {"sleepy": _overload(sleepy, "sleepy", SLEEPY_BODY, seconds, workdir),
            "iris": _overload(iris, "iris_model", orjson.dumps(IRIS), seconds, workdir)}


def _overload(model: dict[str, Any], name: str, body: bytes, seconds: int, workdir: Path) -> dict[str, Any]:
    """``model`` driven by max_pending clients (capacity: one request each in flight, none refused),
    then by 4 x max_pending (OVERLOAD x). One of the clients is a probe measuring the latency of
    admitted requests alone (wrk's latency mixes the 503s in). Expect refusals at once, no 504s,
    flat memory, goodput >= 80% of capacity and the admitted p99 within 2x of that at capacity."""
    admitted = model["max_pending"]
    http_port = free_port()
    url = f"http://127.0.0.1:{http_port}/api/models/{name}/prediction"
    with start_hostd({"http": {"port": http_port}}, [model]) as proc:
        alone = _probe(url, 2, body)  # one client alone: the normal latency
        capacity = _load(url, body, admitted, seconds, workdir)
        rss_before = _rss_mb(proc.pid)
        peak = [rss_before]
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, peak, seconds + 1), daemon=True)
        sampler.start()
        overloaded = _load(url, body, OVERLOAD * admitted, seconds, workdir)
        sampler.join()
        flooded = _load(url, body, FLOOD * admitted, seconds, workdir)
        alive = proc.poll() is None
    return {"max_pending": admitted, "seconds": seconds, "daemon_alive": alive,
            "capacity_rps": capacity["goodput_rps"], "overloaded_goodput_rps": overloaded["goodput_rps"],
            "goodput_vs_capacity": round(overloaded["goodput_rps"] / max(capacity["goodput_rps"], 1), 2),
            "admitted_latency_ms": {"alone_p50": alone["p50_ms"], "alone_p99": alone["p99_ms"],
                                    "capacity_p50": capacity["probe"]["p50_ms"],
                                    "capacity_p99": capacity["probe"]["p99_ms"],
                                    "overloaded_p50": overloaded["probe"]["p50_ms"],
                                    "overloaded_p99": overloaded["probe"]["p99_ms"]},
            "overloaded_p99_vs_capacity": _ratio(overloaded["probe"]["p99_ms"], capacity["probe"]["p99_ms"]),
            "flooded_16x": {"goodput_rps": flooded["goodput_rps"],
                            "goodput_vs_capacity": round(flooded["goodput_rps"] / max(capacity["goodput_rps"], 1), 2),
                            "admitted_p99_ms": flooded["probe"]["p99_ms"],
                            "p99_vs_capacity": _ratio(flooded["probe"]["p99_ms"], capacity["probe"]["p99_ms"]),
                            "statuses": flooded["statuses"]},
            "all_responses_overloaded_ms": {"p50": overloaded["wrk"].p50_ms, "p99": overloaded["wrk"].p99_ms},
            "statuses": {"capacity": capacity["statuses"], "overloaded": overloaded["statuses"]},
            "rss_mb": {"before": rss_before, "peak": max(peak)}}


def _load(url: str, body: bytes, clients: int, seconds: int, workdir: Path) -> dict[str, Any]:
    """wrk from ``clients`` - 1 connections and the probe for ``seconds``: statuses, goodput, probe latency."""
    probe: dict[str, Any] = {}
    prober = threading.Thread(target=lambda: probe.update(_probe(url, seconds, body)), daemon=True)
    prober.start()
    statuses: dict[int, int] = {}
    load = wrk(url, body, clients - 1, seconds, workdir, server="hostd", statuses=statuses)
    prober.join()
    for status, count in probe["statuses"].items():
        statuses[status] = statuses.get(status, 0) + count
    return {"wrk": load, "probe": probe, "statuses": statuses, "goodput_rps": round(statuses.get(200, 0) / seconds)}


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 2) if value is not None and base else None


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


def _probe(url: str, seconds: float, body: bytes = SLEEPY_BODY, headers: dict[str, str] | None = None
           ) -> dict[str, Any]:
    """One client sending one request at a time: latency of those admitted (200), statuses seen."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            status = client.post(url, content=body, headers={"content-type": "application/json",
                                                             **(headers or {})}).status_code
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
