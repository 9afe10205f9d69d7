"""Big HTTP requests are parsed and decoded off the event loop (issue 13.5): a 1 MB OIP v2 body is ~0.3 s
of CPU, which on the loop would hold up every other client of every transport."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

import hostd_http.v2
from hostd.dataplane import DataPlane
from hostd.registry import Registry
from hostd.settings import HostSettings
from hostd.tasks import OFF_LOOP_BYTES
from hostd_http.app import create_app

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
