"""Helpers shared by the end-to-end tests: real-model payloads, /metrics, RSS, and the daemon's log."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import orjson
from sklearn.datasets import load_diabetes, load_digits, load_iris

IRIS_FIELDS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
DIABETES_FIELDS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
#: The three model packages, as the e2e tests serve them.
REAL_MODELS: list[dict[str, Any]] = [
    {"class_path": "iris_model.model:IrisModel"},
    {"class_path": "digits_model.model:DigitsModel", "workers": {"count": 2}},
    {"class_path": "diabetes_model.model:DiabetesModel"},
]
#: Rows of sklearn's iris data set and their species.
SPECIES = {0: "Iris setosa", 50: "Iris versicolor", 100: "Iris virginica"}


def iris_payload(index: int = 0) -> dict[str, float]:
    return dict(zip(IRIS_FIELDS, load_iris().data[index].tolist(), strict=True))


def diabetes_payload(index: int = 0) -> dict[str, float]:
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


def refused(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` any more."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True


def every_model_requests() -> dict[str, tuple[str, dict[str, Any]]]:
    """Request id -> (model, input): three iris rows, ten digits, three diabetes rows."""
    digits = load_digits()
    requests = {f"iris-{i}": ("iris_model", iris_payload(i)) for i in SPECIES}
    requests |= {f"digit-{i}": ("digits_model", {"image": digits.images[i].astype(int).tolist()}) for i in range(10)}
    requests |= {f"diabetes-{i}": ("diabetes_model", diabetes_payload(i)) for i in range(3)}
    return requests
