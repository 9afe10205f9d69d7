"""Process workers and memory: what ``share_memory`` saves, and what more process workers buy.

- Memory: the digits forest with 4 process workers, forked from one zygote that loaded it
  (``share_memory: true``) against 4 workers that each load it (``false``). USS (memory only that
  process holds) and PSS (each shared page split among the processes sharing it) summed over the
  daemon's process tree, after a load that made every worker predict (so its copy-on-write faults
  are counted).
- Throughput: the GIL-bound model with 1, 2 and 4 process workers, 8 connections each. It cannot
  exceed the machine's cores, so ``cores`` is in the result.

    python -m benchmarks.memory [SECONDS]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from sklearn.datasets import load_digits

from benchmarks.common import free_port, start_hostd
from benchmarks.oip_infer import wrk
from benchmarks.scenarios import BODY, GIL_MODEL

DIGITS_MODEL = {"class_path": "digits_model.model:DigitsModel", "max_pending": 256}
WORKERS = 4
CONNECTIONS = 8
MB = 2**20


def memory(seconds: int, workdir: Path) -> dict[str, Any]:
    """Tree memory of the digits model's 4 workers shared and separate; the GIL-bound model's rps."""
    return {"cores": os.cpu_count(), "workers": WORKERS, "seconds": seconds,
            "digits": _digits_memory(seconds, workdir), "gil_bound": _gil_bound(seconds, workdir)}


def _digits_memory(seconds: int, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, share in (("shared", True), ("separate", False)):
        port = free_port()
        model = {**DIGITS_MODEL, "workers": {"kind": "process", "count": WORKERS, "share_memory": share}}
        started = time.perf_counter()
        with start_hostd({"http": {"port": port}}, [model]) as proc:
            ready_s = time.perf_counter() - started
            load = wrk(f"http://127.0.0.1:{port}/api/models/digits_model/prediction", _digits_body(), CONNECTIONS,
                       seconds, workdir, server=f"hostd (digits, {label})")
            results[label] = {**_tree_memory(proc.pid), "ready_s": round(ready_s, 1), "rps": round(load.rps),
                              "errors": load.errors}
    for measure in ("uss_mb", "pss_mb"):
        results[f"separate_over_shared_{measure}"] = round(results["separate"][measure] / results["shared"][measure], 2)
    return results


def _digits_body() -> bytes:
    image = load_digits().images[3].astype(int).tolist()
    # Indented: wrk's Lua script holds the body in [[...]], which the "]]" of compact JSON would end.
    return json.dumps({"image": image}, indent=1).encode()


def _tree_memory(pid: int) -> dict[str, Any]:
    """USS, PSS and RSS in MiB summed over ``pid`` and its descendants, and the daemon's own USS."""
    daemon = psutil.Process(pid)
    tree = [daemon, *daemon.children(recursive=True)]
    infos = [process.memory_full_info() for process in tree]
    return {"processes": len(tree),
            "uss_mb": round(sum(info.uss for info in infos) / MB, 1),
            "pss_mb": round(sum(info.pss for info in infos) / MB, 1),
            "rss_mb": round(sum(info.rss for info in infos) / MB, 1),
            "daemon_uss_mb": round(infos[0].uss / MB, 1)}


def _gil_bound(seconds: int, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for count in (1, 2, 4):
        port = free_port()
        model = {**GIL_MODEL, "workers": {"kind": "process", "count": count}, "max_pending": 64}
        with start_hostd({"http": {"port": port}}, [model]):
            load = wrk(f"http://127.0.0.1:{port}/api/models/gil_bound/prediction", BODY, CONNECTIONS, seconds,
                       workdir, server=f"hostd ({count} process workers)")
        results[f"{count}_workers"] = {"rps": round(load.rps), "p50_ms": load.p50_ms, "p99_ms": load.p99_ms,
                                       "errors": load.errors}
    return results


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="hostd-bench-") as tmp:
        print(json.dumps(memory(int(sys.argv[1]) if len(sys.argv) > 1 else 5, Path(tmp)), indent=2))
