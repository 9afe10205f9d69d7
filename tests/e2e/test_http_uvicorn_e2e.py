"""`server: uvicorn` serves the same HTTP API, and shuts down as gracefully as hypercorn."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import HostdProcess
from tests.support.e2e import REAL_MODELS, Start, echo, iris_payload, pending, post_held, wait_for

IRIS = iris_payload(0)


def uvicorn_hostd(start_hostd: Start) -> HostdProcess:
    return start_hostd({"models": [REAL_MODELS[0], echo(workers=16)], "transports": {"http": {"server": "uvicorn"}},
                        "shutdown_grace_s": 10})


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
def test_uvicorn_answers_requests_in_flight_at_sigterm_then_exits_0(start_hostd: Start, tmp_path: Path) -> None:
    server = uvicorn_hostd(start_hostd)
    gate = tmp_path / "gate"  # the requests stay in the model until the test creates it

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post_held, server.url, gate, i) for i in range(8)]
        wait_for(lambda: pending(server.url) >= 8, "the 8 requests never reached the model")
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in server.output(), "hostd never began to drain")
        assert not any(future.done() for future in futures)
        gate.touch()
        results = [future.result(timeout=60) for future in futures]
    assert results == [(200, {"y": 2.0 * i, "text": ""}) for i in range(8)]
    assert server.proc.wait(20) == 0
