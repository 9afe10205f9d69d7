"""What travels through Redis to and from hostd's arq worker: data (msgpack), never pickles, unless the
host opts in with ``serializer: pickle``. Clients here are plain arq clients, configured as the README says."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgpack
import pytest
from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.jobs import Job, SerializationError

from tests.conftest import HostdProcess
from tests.e2e.brokers import Redis, StartRedis, finished
from tests.support.e2e import Start, echo, iris_payload, logged

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

QUEUE = "hostd-test:serializer"


class Marker:
    """What an attacker who can write to Redis enqueues: unpickling it creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.path), "w")


async def serve(start_hostd: Start, redis: Redis, **arq: Any) -> HostdProcess:
    settings = {"redis_url": redis.url, "queue_name": QUEUE, **arq}
    config = {"models": [{"class_path": "iris_model.model:IrisModel"}, echo()],
              "transports": {"http": {}, "arq": settings}}
    return await anyio.to_thread.run_sync(lambda: start_hostd(config))


@asynccontextmanager
async def client(redis: Redis, **serializers: Any) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings(host="127.0.0.1", port=redis.port, conn_timeout=2), **serializers)
    try:
        yield pool
    finally:
        await pool.aclose()


def msgpack_client(redis: Redis) -> Any:
    """The README's client settings: plain msgpack, nothing from hostd."""
    return client(redis, job_serializer=msgpack.packb, job_deserializer=msgpack.unpackb)


async def test_a_pickled_job_is_not_unpickled(start_redis: StartRedis, start_hostd: Start, tmp_path: Path) -> None:
    redis = start_redis()
    server = await serve(start_hostd, redis)
    marker = tmp_path / "marker"
    async with client(redis) as attacker:  # arq's default serializer: pickle
        job = await attacker.enqueue_job("predict", Marker(marker), {"x": 1}, _queue_name=QUEUE)
        assert job is not None
    async with msgpack_client(redis) as pool:
        info = await finished(Job(job.job_id, pool, _queue_name=QUEUE, _deserializer=msgpack.unpackb))
        assert not info.success
        assert info.result["code"] == "INVALID_INPUT"
        assert "unable to deserialize job" in info.result["message"]
        good = await pool.enqueue_job("predict", "echo", {"x": 2}, _queue_name=QUEUE)
        assert good is not None
        assert await good.result(timeout=30, poll_delay=0.05) == {"y": 4.0, "text": ""}
    assert not marker.exists(), "hostd unpickled the job"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert (await http.post("/api/models/echo/prediction", json={"x": 3})).json() == {"y": 6.0, "text": ""}
    assert server.proc.poll() is None


async def test_a_plain_msgpack_client_gets_predictions_and_readable_errors(start_redis: StartRedis,
                                                                          start_hostd: Start) -> None:
    redis = start_redis()
    await serve(start_hostd, redis)
    async with msgpack_client(redis) as pool:
        good = await pool.enqueue_job("predict", "iris_model", iris_payload(0), _queue_name=QUEUE)
        bad = await pool.enqueue_job("predict", "iris_model", {**iris_payload(0), "sepal_width": "wide"},
                                     _queue_name=QUEUE)
        unknown = await pool.enqueue_job("predict", "no_such_model", {"x": 1}, _queue_name=QUEUE)
        assert good is not None and bad is not None and unknown is not None
        assert await good.result(timeout=30, poll_delay=0.05) == {"species": "Iris setosa"}

        with pytest.raises(SerializationError) as raised:  # arq raises a failure it cannot rebuild like this
            await bad.result(timeout=30, poll_delay=0.05)
        error = raised.value.args[0]
        assert error["code"] == "INVALID_INPUT"
        assert "invalid input for model 'iris_model'" in error["message"]
        assert error["details"][0]["field"] == "sepal_width"
        assert "INVALID_INPUT" in str(raised.value) and "sepal_width" in str(raised.value)
        info = await bad.result_info()
        assert info is not None and not info.success and info.result == error

        with pytest.raises(SerializationError, match="MODEL_NOT_FOUND"):
            await unknown.result(timeout=30, poll_delay=0.05)


async def test_pickle_is_an_opt_in_that_warns(start_redis: StartRedis, start_hostd: Start) -> None:
    redis = start_redis()
    server = await serve(start_hostd, redis, serializer="pickle")
    assert logged(server, "arq jobs are pickled") == 1
    async with client(redis) as pool:  # arq's defaults, as before the opt-in existed
        job = await pool.enqueue_job("predict", "echo", {"x": 5}, _queue_name=QUEUE)
        assert job is not None
        assert await job.result(timeout=30, poll_delay=0.05) == {"y": 10.0, "text": ""}
