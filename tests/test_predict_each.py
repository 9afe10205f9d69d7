"""DataPlane.predict_each: independent rows (stream messages), each with its own outcome and budget."""

from __future__ import annotations

from typing import Any

import pytest

from hostd.dataplane import EACH_CHUNK, DataPlane, Prediction
from hostd.errors import InvalidInput, ModelError, ModelNotFound, NotReady
from hostd.registry import Registry
from hostd.settings import HostSettings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def plane(ready: bool = True, **settings: Any) -> DataPlane:
    model = {"class_path": "tests.support.toy:EchoModel", **settings}
    dataplane = DataPlane(Registry.from_settings(HostSettings.model_validate({"models": [model]})))
    if ready:
        dataplane.set_ready()
    return dataplane


def requests(dataplane: DataPlane, code: str, model: str = "echo") -> float:
    value = dataplane.metrics.registry.get_sample_value(
        "hostd_requests_total", {"model": model, "transport": "kafka", "code": code})
    return value or 0.0


async def test_each_row_gets_its_own_outcome_in_order() -> None:
    dataplane = plane()
    rows = [{"x": 1}, {"x": "not a number"}, {"x": 3, "fail": True}, {"x": 4}]
    outcomes = await dataplane.predict_each("echo", rows, transport="kafka")
    assert outcomes[0] == Prediction("echo", "1.0.0", [{"y": 2.0, "text": ""}])
    assert isinstance(outcomes[1], InvalidInput) and outcomes[1].details[0]["field"] == "x"
    assert isinstance(outcomes[2], ModelError)
    assert outcomes[3] == Prediction("echo", "1.0.0", [{"y": 8.0, "text": ""}])
    assert (requests(dataplane, "OK"), requests(dataplane, "INVALID_INPUT"), requests(dataplane, "MODEL_ERROR")) \
        == (2, 1, 1)


async def test_a_full_chunk_of_slow_rows_within_timeout_ms_each_is_predicted_with_batching_on() -> None:
    # 64 rows of 20 ms in one batch take 1.28 s, more than timeout_ms, but no row waits longer
    # than its own budget would allow (the chunk's budget is timeout_ms per row).
    dataplane = plane(timeout_ms=1000, batching={"max_batch_size": 64})
    outcomes = await dataplane.predict_each("echo", [{"x": i, "delay_ms": 20} for i in range(EACH_CHUNK)])
    assert [outcome.output["y"] for outcome in outcomes if isinstance(outcome, Prediction)] == \
        [2.0 * i for i in range(EACH_CHUNK)]
    assert dataplane.model("echo").model.batches == [EACH_CHUNK]


async def test_rows_go_to_the_model_in_chunks() -> None:
    dataplane = plane()
    outcomes = await dataplane.predict_each("echo", [{"x": i} for i in range(2 * EACH_CHUNK + 2)])
    assert all(isinstance(outcome, Prediction) for outcome in outcomes)
    assert dataplane.model("echo").model.batches == [EACH_CHUNK, EACH_CHUNK, 2]


async def test_a_bad_row_does_not_cost_a_call_per_row() -> None:
    dataplane = plane()
    outcomes = await dataplane.predict_each("echo", [{"x": i, "fail": i == 10} for i in range(EACH_CHUNK)])
    assert [i for i, outcome in enumerate(outcomes) if isinstance(outcome, ModelError)] == [10]
    assert len(dataplane.model("echo").model.batches) < EACH_CHUNK // 4


async def test_an_unknown_model_fails_every_row() -> None:
    outcomes = await plane().predict_each("nope", [{"x": 1}, {"x": 2}], transport="kafka")
    assert len(outcomes) == 2 and all(isinstance(outcome, ModelNotFound) for outcome in outcomes)


async def test_not_ready_fails_every_row() -> None:
    outcomes = await plane(ready=False).predict_each("echo", [{"x": 1}, {"x": 2}])
    assert len(outcomes) == 2 and all(isinstance(outcome, NotReady) for outcome in outcomes)


async def test_no_rows_is_no_outcome() -> None:
    assert await plane().predict_each("echo", []) == []
