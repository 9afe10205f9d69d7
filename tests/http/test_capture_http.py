"""The HTTP side of issue 18, in-process through ASGI: X-Request-Id on every reply, the cache's headers
and Cache-Control, and the feedback and quality routes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from hostd_http.app import create_app

from hostd.capture import Capture
from hostd.dataplane import DataPlane
from hostd.feedback import Feedback
from hostd.observability import Metrics
from hostd.registry import Registry
from hostd.settings import FeedbackSettings, HostSettings

pytestmark = pytest.mark.anyio

SETTINGS = {"models": [
    {"class_path": "tests.support.toy:EchoModel", "cache": {"max_entries": 100}},  # echo: y = 2x, cached
    {"class_path": "tests.support.toy:EchoModel", "configuration": {"name": "plain"}},  # no cache
]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = HostSettings.model_validate(SETTINGS)
    registry, metrics = Registry.from_settings(settings), Metrics()
    plane = DataPlane(registry, metrics, capture=Capture(registry, feedback=Feedback(FeedbackSettings(), metrics)))
    plane.set_ready()
    app = create_app(plane, settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hostd") as http:
        yield http


async def test_every_reply_names_its_request_id(client: httpx.AsyncClient) -> None:
    made_up = [(await client.post("/api/models/echo/prediction", json={"x": 1})).headers["x-request-id"],
               (await client.post("/api/models/echo/prediction", json={"x": "no"})).headers["x-request-id"],
               (await client.get("/api/models/nope/metadata")).headers["x-request-id"],
               (await client.get("/no/such/route")).headers["x-request-id"]]
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in made_up) and len(set(made_up)) == 4
    sent = await client.post("/api/models/echo/prediction", json={"x": 1}, headers={"X-Request-Id": "order-42"})
    assert sent.headers["x-request-id"] == "order-42"
    unfit = await client.post("/api/models/echo/prediction", json={"x": 1}, headers={"X-Request-Id": "a b"})
    assert unfit.headers["x-request-id"] != "a b" and len(unfit.headers["x-request-id"]) == 32


async def test_oip_takes_the_bodys_id_when_no_header_names_one(client: httpx.AsyncClient) -> None:
    body = {"id": "infer-7", "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}]}
    answer = await client.post("/v2/models/echo/infer", json=body)
    assert (answer.headers["x-request-id"], answer.json()["id"]) == ("infer-7", "infer-7")
    answer = await client.post("/v2/models/echo/infer", json=body, headers={"X-Request-Id": "header-8"})
    assert (answer.headers["x-request-id"], answer.json()["id"]) == ("header-8", "infer-7")
    for unfit in ("a\nb", "x" * 257, ""):  # not a header's value: the body keeps it, the header gets a new one
        answer = await client.post("/v2/models/echo/infer", json={**body, "id": unfit})
        assert answer.status_code == 200 and answer.json().get("id", "") == unfit
        assert len(answer.headers["x-request-id"]) == 32


async def test_the_cache_says_hit_or_miss_and_no_cache_skips_it(client: httpx.AsyncClient) -> None:
    path = "/api/models/echo/prediction"
    assert (await client.post(path, json={"x": 5})).headers["x-cache"] == "MISS"
    hit = await client.post(path, json={"x": 5.0})
    assert (hit.headers["x-cache"], hit.json()) == ("HIT", {"y": 10.0, "text": ""})
    assert (await client.post(path, json={"x": 5}, headers={"Cache-Control": "no-cache"})).headers["x-cache"] == "MISS"
    infer = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [5.0, 6.0]}]}
    partly = await client.post("/v2/models/echo/infer", json=infer)
    assert (partly.headers["x-cache"], partly.json()["parameters"]) == ("MISS", {"cached": False})
    again = await client.post("/v2/models/echo/infer", json=infer)
    assert (again.headers["x-cache"], again.json()["parameters"]) == ("HIT", {"cached": True})
    plain = await client.post("/api/models/plain/prediction", json={"x": 5})
    assert "x-cache" not in plain.headers  # a model without a cache says nothing about one


async def test_feedback_joins_a_label_by_request_id_and_quality_shows_it(client: httpx.AsyncClient) -> None:
    answer = await client.post("/api/models/plain/prediction", json={"x": 2})  # y = 4.0
    rid = answer.headers["x-request-id"]
    joined = await client.post("/api/models/plain/feedback", json={"request_id": rid, "label": 5.0})
    assert joined.json() == {"request_id": rid, "model": "plain", "version": "1.0.0", "joined": True}
    assert (await client.get("/api/quality")).json() == {"quality": [
        {"model": "plain", "version": "1.0.0", "kind": "regression", "labels": 1, "mae": 1.0, "rmse": 1.0}]}
    again = await client.post("/api/models/plain/feedback", json={"request_id": rid, "label": 5.0})
    assert again.status_code == 200 and again.json()["joined"] is False
    missing = await client.post("/api/models/plain/feedback", json={"request_id": rid})
    assert (missing.status_code, missing.json()["type"]) == (400, "INVALID_INPUT")
    unknown_model = await client.post("/api/models/nope/feedback", json={"request_id": rid, "label": 1})
    assert unknown_model.status_code == 404
