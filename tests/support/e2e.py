"""Helpers shared by the end-to-end tests: models and payloads, /metrics, waiting, RSS, the daemon's log."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import orjson
from sklearn.datasets import load_diabetes, load_digits, load_iris

from tests.conftest import HostdProcess

#: The start_hostd fixture's type.
Start = Callable[..., HostdProcess]
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
#: Rows the iris model classifies as the data set says, with rows 4 and 101 besides those above.
IRIS_ROWS = {**SPECIES, 4: "Iris setosa", 101: "Iris virginica"}
#: How long a wait for something the test caused may take before the test fails: a guard against a
#: hang on a loaded machine (the per-test timeout is 60 s), not a measure of speed.
PATIENCE_S = 30.0


def echo(workers: int = 8, **settings: Any) -> dict[str, Any]:
    """The toy echo model (y = 2x; sleeps delay_ms; raises when fail is true; waits for the file
    ``gate`` names, if any: see GatedEcho), with a timeout_ms longer than any test holds a call."""
    return {"class_path": "tests.support.toy:GatedEcho", "workers": {"count": workers}, "timeout_ms": 40_000,
            **settings}


def iris_rows() -> tuple[np.ndarray, list[str]]:
    """The IRIS_ROWS as a (rows, 4) array, and their species."""
    return load_iris().data[list(IRIS_ROWS)], list(IRIS_ROWS.values())


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


def pending(url: str, model: str = "echo") -> float:
    """Requests the model has admitted and not yet answered."""
    return metric(url, f'hostd_pending{{model="{model}"}}')


def post_held(url: str, gate: Path, x: int) -> tuple[int, Any]:
    """POST an echo prediction that waits in the model until ``gate`` exists; (status, body)."""
    response = httpx.post(f"{url}/api/models/echo/prediction", json={"x": x, "gate": str(gate)}, timeout=60)
    return response.status_code, response.json()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = PATIENCE_S) -> None:
    """Poll ``condition`` until it holds; fail saying ``what`` did not happen if it takes ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} (waited {timeout} s)"
        time.sleep(0.02)


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = PATIENCE_S) -> None:
    """``wait_for`` for a condition that is itself awaited (on the test's event loop)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"{what} (waited {timeout} s)"
        await anyio.sleep(0.02)


def logged(server: HostdProcess, text: str) -> int:
    """How many times the daemon's log says ``text``."""
    return server.output().count(text)


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
