"""Helpers shared by the end-to-end tests: real-model payloads, /metrics, RSS, and the daemon's log."""

from __future__ import annotations

import httpx
import orjson
from sklearn.datasets import load_diabetes, load_iris

IRIS_FIELDS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
DIABETES_FIELDS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def iris_payload(index: int) -> dict[str, float]:
    return dict(zip(IRIS_FIELDS, load_iris().data[index].tolist(), strict=True))


def diabetes_payload(index: int) -> dict[str, float]:
    return dict(zip(DIABETES_FIELDS, load_diabetes(scaled=False).data[index].tolist(), strict=True))


def metric(url: str, line_prefix: str) -> float:
    """The value of the first /metrics line starting with ``line_prefix`` (0 if none)."""
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def problems_logged(output: str) -> list[str]:
    """Log lines at error level or above, and tracebacks."""
    bad = []
    for line in output.splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            if "Traceback" in line or "Error" in line:
                bad.append(line)
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "critical", "exception"):
            bad.append(line)
    return bad
