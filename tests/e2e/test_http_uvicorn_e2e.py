"""`server: uvicorn` serves the same HTTP API, and shuts down as gracefully as hypercorn."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import HostdProcess

Start = Callable[..., HostdProcess]
IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def uvicorn_hostd(start_hostd: Start) -> HostdProcess:
    return start_hostd({
        "models": [{"class_path": "iris_model.model:IrisModel"},
                   {"class_path": "tests.support.toy:EchoModel", "workers": {"count": 16}, "timeout_ms": 10_000}],
        "transports": {"http": {"server": "uvicorn"}},
        "shutdown_grace_s": 10,
    })


@pytest.mark.e2e
def test_uvicorn_serves_rest_v2_and_tritonclient(start_hostd: Start) -> None:
    server = uvicorn_hostd(start_hostd)
    rest = httpx.post(f"{server.url}/api/models/iris_model/prediction", json=IRIS)
    assert rest.status_code == 200 and rest.json() == {"species": "Iris setosa"}
    bad = httpx.post(f"{server.url}/api/models/iris_model/prediction", json={"sepal_length": 50})
    assert bad.status_code == 400 and bad.json()["type"] == "INVALID_INPUT"
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        inputs = []
        for name, value in IRIS.items():
            tensor = triton.InferInput(name, [2], "FP32")
            tensor.set_data_from_numpy(np.array([value, value], dtype=np.float32))
            inputs.append(tensor)
        assert list(client.infer("iris_model", inputs).as_numpy("species")) == [b"Iris setosa"] * 2
    finally:
        client.close()


@pytest.mark.e2e
def test_uvicorn_answers_requests_in_flight_at_sigterm_then_exits_0(start_hostd: Start) -> None:
    server = uvicorn_hostd(start_hostd)

    def slow(i: int) -> tuple[int, Any]:
        response = httpx.post(f"{server.url}/api/models/echo/prediction", json={"x": i, "delay_ms": 800},
                              timeout=20)
        return response.status_code, response.json()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(slow, i) for i in range(8)]
        for _ in range(250):  # wait (bounded, ~5 s) until all 8 are admitted
            if 'hostd_pending{model="echo"} 8.0' in httpx.get(f"{server.url}/metrics").text:
                break
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        results = [future.result(timeout=20) for future in futures]
    assert results == [(200, {"y": 2.0 * i, "text": ""}) for i in range(8)]
    assert server.proc.wait(20) == 0
