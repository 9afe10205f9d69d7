"""How an OIP v2 infer request is decoded: a big one off the event loop (issue 13.5: a 1 MB body is ~0.3 s
of CPU, which on the loop would hold up every other client of every transport), and answered by the
version the data plane picks once it is decoded (issue 14: a reload may happen meanwhile)."""

from __future__ import annotations

import threading
from typing import Any

import hostd_http.v2
import httpx
import pytest
from hostd_http.app import create_app

from hostd.dataplane import DataPlane
from hostd.registry import Registry, build_model
from hostd.settings import HostSettings, ModelSettings
from hostd.tasks import OFF_LOOP_BYTES

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("rows", [1, 20_000])
async def test_a_big_v2_body_is_decoded_in_a_worker_thread(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = HostSettings.model_validate({"models": [{"class_path": "tests.support.toy:EchoModel"}]})
    plane = DataPlane(Registry.from_settings(settings))
    plane.set_ready()
    decoded_on: list[str] = []
    decode = hostd_http.v2.decode_inputs

    def recording(*args: Any) -> Any:
        decoded_on.append(threading.current_thread().name)
        return decode(*args)

    monkeypatch.setattr(hostd_http.v2, "decode_inputs", recording)
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [rows], "data": [1.5] * rows}]}
    app = create_app(plane, settings, max_body=1 << 20)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hostd") as client:
        reply = await client.post("/v2/models/echo/infer", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == [3.0] * rows
    big = len(httpx.Request("POST", "/", json=body).content) >= OFF_LOOP_BYTES
    assert big == (rows > 1)
    assert (decoded_on[0] != threading.main_thread().name) == big, decoded_on


async def test_a_reload_while_a_request_is_decoded_answers_from_the_new_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The version that answers is picked when the request reaches the data plane, not when its
    # tensors were looked up: a reload to a new version in between is no MODEL_NOT_FOUND.
    settings = HostSettings.model_validate({"models": [{"class_path": "tests.support.toy:EchoModel"}]})
    registry = Registry.from_settings(settings)
    plane = DataPlane(registry)
    plane.set_ready()
    newer = build_model(ModelSettings(class_path="tests.support.toy:EchoModel",
                                      configuration={"version": "2.0.0", "factor": 3}))
    decode = hostd_http.v2.decode_inputs

    def reloading(*args: Any) -> Any:
        registry.add(newer)
        registry.remove("echo", "1.0.0")
        return decode(*args)

    monkeypatch.setattr(hostd_http.v2, "decode_inputs", reloading)
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.5]}]}
    app = create_app(plane, settings, max_body=1 << 20)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hostd") as client:
        reply = await client.post("/v2/models/echo/infer", json=body)
    assert reply.status_code == 200, reply.text
    assert (reply.json()["model_version"], reply.json()["outputs"][0]["data"]) == ("2.0.0", [4.5])
