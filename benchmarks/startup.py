"""Start-up (issue 16): how long `hostd run` takes to be ready, against the floor of importing and
constructing the same models in a bare Python process; and what 100 configured models cost (ready
time, RSS, and whether a request gets slower with the number of models).

Each figure is the median of ROUNDS runs, hostd and the floor taking turns, wall time from spawning
the process (interpreter start included in both).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.common import IRIS, ROOT, free_port, percentile
from benchmarks.scenarios import _rss_mb

ROUNDS = 3
REQUESTS = 300
THREE_MODELS = [{"class_path": "iris_model.model:IrisModel"}, {"class_path": "digits_model.model:DigitsModel"},
                {"class_path": "diabetes_model.model:DiabetesModel"}]
FLOOR = """
import time
started = time.perf_counter()
from iris_model.model import IrisModel
from digits_model.model import DigitsModel
from diabetes_model.model import DiabetesModel
IrisModel(); DigitsModel(); DiabetesModel()
"""


def startup(seconds: int, workdir: Path) -> dict[str, Any]:
    floor, three = [], []
    for _ in range(ROUNDS):
        floor.append(_floor())
        three.append(_hostd(THREE_MODELS, workdir)["ready_s"])
    many = [{"class_path": "benchmarks.toys:NamedIris", "qualified_name": f"iris_{i:03d}",
             "configuration": {"name": f"iris_{i:03d}"}} for i in range(100)]
    one_iris = _hostd(THREE_MODELS[:1], workdir, probe="iris_model")
    hundred = _hostd(many, workdir, probe="iris_050")
    return {
        "floor_s": round(statistics.median(floor), 3), "hostd_three_models_s": round(statistics.median(three), 3),
        "over_floor_s": round(statistics.median(three) - statistics.median(floor), 3),
        "one_model": one_iris, "hundred_models": hundred,
        "request_p50_ratio_100_vs_1": round(hundred["request_p50_ms"] / one_iris["request_p50_ms"], 2),
    }


def _floor() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOOR], check=True, cwd=ROOT, timeout=120)
    return time.perf_counter() - started


def _hostd(models: list[dict[str, Any]], workdir: Path, probe: str | None = None) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        config = Path(tmp) / "host.yaml"
        config.write_text(yaml.safe_dump({"models": models, "transports": {"http": {"port": port}},
                                          "log_level": "warning"}))
        started = time.perf_counter()
        proc = subprocess.Popen([str(Path(sys.executable).with_name("hostd")), "run", str(config)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready = _ready_after(port, started)
            result: dict[str, Any] = {"models": len(models), "ready_s": round(ready, 3), "rss_mb": _rss_mb(proc.pid)}
            if probe is not None:
                result["request_p50_ms"] = _p50(f"http://127.0.0.1:{port}/api/models/{probe}/prediction")
            return result
        finally:
            proc.terminate()
            proc.wait(30)


def _ready_after(port: int, started: float) -> float:
    deadline = started + 120
    with httpx.Client(timeout=1) as client:
        while time.perf_counter() < deadline:
            try:
                if client.get(f"http://127.0.0.1:{port}/api/health/ready").status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.01)
    raise SystemExit("hostd did not become ready in 120 s")


def _p50(url: str) -> float:
    latencies = []
    with httpx.Client(timeout=10) as client:
        for _ in range(REQUESTS):
            started = time.perf_counter()
            client.post(url, json=IRIS).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    value = percentile(latencies, 0.5)
    assert value is not None
    return round(value, 3)
