"""What every benchmark shares: the iris row, free ports, a hostd started for one run, results."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
IRIS_MODEL = {"class_path": "iris_model.model:IrisModel", "max_pending": 4096}


@dataclass
class Result:
    server: str  # hostd, hostd-uvicorn, mlserver, raw ...
    transport: str
    concurrency: int  # connections (HTTP, gRPC) or requests in flight (WS, ZeroMQ, streams)
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    tool: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


@contextmanager
def start_hostd(transports: dict[str, Any], models: list[dict[str, Any]] | None = None, **settings: Any
                ) -> Iterator[subprocess.Popen[bytes]]:
    """``hostd run`` on a config of ``models`` (iris by default), ``transports`` (which must include
    http, used to wait for ready) and other top-level ``settings`` until the block ends; stopped with
    SIGTERM."""
    config = {"models": models or [IRIS_MODEL], "transports": transports, "log_level": "warning", **settings}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "host.yaml"
        path.write_text(yaml.safe_dump(config))
        hostd = str(Path(sys.executable).with_name("hostd"))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # benchmarks.toys, also in process workers
        log = (Path(tmp) / "hostd.log").open("wb")  # its warnings (e.g. clients leaving at the end of a run)
        proc = subprocess.Popen([hostd, "run", str(path)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            scheme = "https" if transports["http"].get("tls") else "http"
            _wait_ready(proc, f"{scheme}://127.0.0.1:{transports['http']['port']}", Path(tmp) / "hostd.log")
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            log.close()


def _wait_ready(proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:  # verify=False: the benchmarks' certificates come from a throwaway CA
            if httpx.get(f"{base_url}/api/health/ready", timeout=1, verify=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"hostd did not become ready:\n{log.read_text()[-3000:]}")
