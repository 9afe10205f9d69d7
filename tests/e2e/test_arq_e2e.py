"""hostd run, served over arq (Redis): jobs enqueued with arq's own client, results read with it."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.constants import result_key_prefix
from arq.jobs import Job, JobResult, JobStatus
from hostd_arq.serializer import deserialize_errors, serialize
from sklearn.datasets import load_digits, load_iris

from hostd.errors import ErrorCode, InvalidInput, ModelError, ModelNotFound
from tests.conftest import HostdProcess
from tests.e2e.brokers import Redis, StartRedis, finished
from tests.support.e2e import REAL_MODELS, SPECIES, Start, echo, every_model_requests, iris_payload, logged, until

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

QUEUE = "hostd-test:queue"
UNAVAILABLE = "redis unavailable; retrying"  # what hostd logs each time it cannot reach Redis


async def serve(start_hostd: Start, redis: Redis, models: list[dict[str, Any]], **arq: Any) -> HostdProcess:
    settings = {"redis_url": redis.url, "queue_name": QUEUE, "retry_backoff_s": 0.2, "retry_backoff_max_s": 1.0,
                **arq}
    config = {"models": models, "transports": {"http": {}, "arq": settings}, "shutdown_grace_s": 10}
    return await anyio.to_thread.run_sync(lambda: start_hostd(config))


@asynccontextmanager
async def client(redis: Redis) -> AsyncIterator[ArqRedis]:
    # hostd's jobs are msgpack (never pickle); with hostd installed, deserialize_errors turns a failed
    # prediction back into the hostd error.
    pool = await create_pool(RedisSettings(host="127.0.0.1", port=redis.port, conn_timeout=2),
                             job_serializer=serialize, job_deserializer=deserialize_errors)
    try:
        yield pool
    finally:
        await pool.aclose()


async def enqueue(pool: ArqRedis, model: str, data: Any, version: str | None = None) -> Job:
    job = await pool.enqueue_job("predict", model, data, version=version, _queue_name=QUEUE)
    assert job is not None
    return job


async def wait_status(job: Job, status: JobStatus) -> None:
    async def reached() -> bool:
        return await job.status() is status

    await until(reached, f"job {job.job_id} never {status.value}")


async def wait_logged(server: HostdProcess, text: str, times: int) -> None:
    async def enough() -> bool:
        return logged(server, text) >= times

    await until(enough, f"hostd never logged {text!r} {times} times:\n{server.output()[-2000:]}")


def most_at_once(results: list[JobResult]) -> int:
    events = sorted([(r.start_time, 1) for r in results] + [(r.finish_time, -1) for r in results],
                    key=lambda event: (event[0], event[1]))  # a finish before a start at the same instant
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


async def test_every_model_answers_through_arq(start_redis: StartRedis, start_hostd: Start) -> None:
    redis = start_redis()
    server = await serve(start_hostd, redis, REAL_MODELS)
    requests = every_model_requests()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:  # the same models over HTTP
        over_http = {rid: (await http.post(f"/api/models/{model}/prediction", json=data)).json()
                     for rid, (model, data) in requests.items()}

    async with client(redis) as pool:
        jobs = {rid: await enqueue(pool, model, data) for rid, (model, data) in requests.items()}
        results = {rid: await job.result(timeout=30, poll_delay=0.05) for rid, job in jobs.items()}
        pinned = await (await enqueue(pool, "iris_model", iris_payload(100), version="1.0.0")).result(timeout=30)

    for rid, result in results.items():
        if rid.startswith("diabetes"):  # `sample` is a random draw; the distribution is not
            assert result.keys() == {"progression", "std", "sample"}
            assert result["progression"] == pytest.approx(over_http[rid]["progression"])
            assert result["std"] == pytest.approx(over_http[rid]["std"])
        else:
            assert result == over_http[rid], rid
    assert {i: results[f"iris-{i}"]["species"] for i in SPECIES} == SPECIES
    assert [results[f"digit-{i}"]["digit"] for i in range(10)] == [int(d) for d in load_digits().target[:10]]
    assert pinned == {"species": "Iris virginica"}


@pytest.mark.timeout(120)
async def test_two_thousand_jobs_none_lost(start_redis: StartRedis, start_hostd: Start) -> None:
    total = 2000
    redis = start_redis()
    await serve(start_hostd, redis, [{"class_path": "iris_model.model:IrisModel", "workers": {"count": 2}}])
    flowers = [iris_payload(i) for i in range(150)]
    species = load_iris().target

    async with client(redis) as pool:
        started = time.monotonic()
        jobs = [await enqueue(pool, "iris_model", flowers[i % 150]) for i in range(total)]
        results: list[Any] = [None] * total
        limit = anyio.Semaphore(32)  # readers polling at once

        async def read(index: int) -> None:
            async with limit:
                results[index] = await jobs[index].result(timeout=90, poll_delay=0.05)

        async with anyio.create_task_group() as tg:
            for index in range(total):
                tg.start_soon(read, index)
        elapsed = time.monotonic() - started
        stored = await pool.all_job_results()

    print(f"\narq: {total} jobs in {elapsed:.1f}s = {total / elapsed:.0f} predictions/s end to end")
    assert len({job.job_id for job in jobs}) == total
    names = ["Iris setosa", "Iris versicolor", "Iris virginica"]
    wrong = [i for i, result in enumerate(results) if result["species"] not in names]
    assert not wrong
    # The model is ~97% accurate on its training data: every job got its own flower's answer.
    agree = sum(result["species"] == names[species[i % 150]] for i, result in enumerate(results))
    assert agree >= 0.9 * total
    assert sorted(str(r.job_id) for r in stored if r.success) == sorted(job.job_id for job in jobs)


async def test_failed_predictions_raise_the_hostd_error_in_the_client(start_redis: StartRedis,
                                                                      start_hostd: Start) -> None:
    redis = start_redis()
    await serve(start_hostd, redis, [{"class_path": "iris_model.model:IrisModel"}, echo()])
    async with client(redis) as pool:
        schema = await enqueue(pool, "iris_model", {**iris_payload(0), "sepal_width": "wide"})
        missing = await enqueue(pool, "iris_model", {"sepal_length": 5.0})
        unknown = await enqueue(pool, "no_such_model", {"x": 1})
        version = await enqueue(pool, "iris_model", iris_payload(0), version="9.9.9")
        raises = await enqueue(pool, "echo", {"x": 1, "fail": True})
        good = await enqueue(pool, "echo", {"x": 3})

        with pytest.raises(InvalidInput) as invalid:
            await schema.result(timeout=30, poll_delay=0.05)
        assert invalid.value.code is ErrorCode.INVALID_INPUT
        assert "invalid input for model 'iris_model'" in invalid.value.message
        assert "sepal_width" in invalid.value.message
        assert invalid.value.details[0]["field"] == "sepal_width"
        with pytest.raises(InvalidInput, match="petal_length"):
            await missing.result(timeout=30, poll_delay=0.05)
        with pytest.raises(ModelNotFound, match="model 'no_such_model' is not served here") as not_found:
            await unknown.result(timeout=30, poll_delay=0.05)
        assert not_found.value.code is ErrorCode.MODEL_NOT_FOUND
        with pytest.raises(ModelNotFound, match=r"no version '9\.9\.9'"):
            await version.result(timeout=30, poll_delay=0.05)
        with pytest.raises(ModelError, match="model 'echo' failed: RuntimeError: asked to fail"):
            await raises.result(timeout=30, poll_delay=0.05)
        assert await good.result(timeout=30, poll_delay=0.05) == {"y": 6.0, "text": ""}, "the worker carries on"


async def test_max_jobs_limits_the_jobs_run_at_once(start_redis: StartRedis, start_hostd: Start) -> None:
    redis = start_redis()
    await serve(start_hostd, redis, [echo(workers=8)], max_jobs=2)
    async with client(redis) as pool:
        jobs = [await enqueue(pool, "echo", {"x": i, "delay_ms": 400}) for i in range(6)]
        infos = [await finished(job) for job in jobs]
    assert all(info.success for info in infos)
    assert [info.result["y"] for info in infos] == [2.0 * i for i in range(6)]
    assert most_at_once(infos) == 2, [(i.start_time, i.finish_time) for i in infos]


async def test_job_timeout_s_fails_a_job_that_runs_too_long(start_redis: StartRedis, start_hostd: Start) -> None:
    redis = start_redis()
    await serve(start_hostd, redis, [echo()], job_timeout_s=0.5)
    async with client(redis) as pool:
        slow = await enqueue(pool, "echo", {"x": 1, "delay_ms": 3000})
        quick = await enqueue(pool, "echo", {"x": 2, "delay_ms": 100})
        slow_info, quick_info = await finished(slow), await finished(quick)
        with pytest.raises(asyncio.TimeoutError):
            await slow.result(timeout=5, poll_delay=0.05)  # finished: re-raises the job's own timeout
    # A TimeoutError, not the 3 s job's answer: arq cut it off. Not before job_timeout_s (arq records
    # start and finish in whole milliseconds).
    assert not slow_info.success and isinstance(slow_info.result, asyncio.TimeoutError)
    assert (slow_info.finish_time - slow_info.start_time).total_seconds() >= 0.499
    assert quick_info.success and quick_info.result == {"y": 4.0, "text": ""}


async def test_keep_result_s_is_how_long_a_result_can_be_read(start_redis: StartRedis, start_hostd: Start) -> None:
    redis = start_redis()
    await serve(start_hostd, redis, [echo()], keep_result_s=1)
    async with client(redis) as pool:
        job = await enqueue(pool, "echo", {"x": 5})
        assert await job.result(timeout=30, poll_delay=0.05) == {"y": 10.0, "text": ""}
        ttl_ms = await pool.pttl(result_key_prefix + job.job_id)
        assert 0 < ttl_ms <= 1000
        await wait_status(job, JobStatus.not_found)  # Redis expires it
        assert await job.result_info() is None


@pytest.mark.timeout(90)
async def test_a_job_in_flight_at_sigterm_completes_and_queued_ones_wait(start_redis: StartRedis, start_hostd: Start,
                                                                         tmp_path: Path) -> None:
    redis = start_redis()
    server = await serve(start_hostd, redis, [echo()], max_jobs=1)
    gate = tmp_path / "gate"  # the running job stays in the model until the test creates it
    async with client(redis) as pool:
        running = await enqueue(pool, "echo", {"x": 7, "gate": str(gate)})
        await wait_status(running, JobStatus.in_progress)
        queued = await enqueue(pool, "echo", {"x": 8})
        server.proc.send_signal(signal.SIGTERM)
        await wait_logged(server, "draining", 1)
        gate.touch()
        assert await running.result(timeout=30, poll_delay=0.05) == {"y": 14.0, "text": ""}
        assert await anyio.to_thread.run_sync(server.proc.wait, 15) == 0
        # Not taken during the drain: still queued for the next worker, which answers it.
        assert await queued.status() is JobStatus.queued
        await serve(start_hostd, redis, [echo()])
        assert await queued.result(timeout=30, poll_delay=0.05) == {"y": 16.0, "text": ""}


@pytest.mark.timeout(90)
async def test_the_worker_reconnects_after_a_redis_restart(start_redis: StartRedis, start_hostd: Start) -> None:
    redis = start_redis()
    server = await serve(start_hostd, redis, [echo()])
    async with client(redis) as pool:
        jobs = [await enqueue(pool, "echo", {"x": i}) for i in range(20)]
        assert [(await job.result(timeout=30, poll_delay=0.05))["y"] for job in jobs] == [2.0 * i for i in range(20)]

    # Down until hostd has noticed (and retried); no persistence, so it comes back empty.
    failures = logged(server, UNAVAILABLE)
    await anyio.to_thread.run_sync(redis.stop)
    await wait_logged(server, UNAVAILABLE, failures + 2)
    await anyio.to_thread.run_sync(redis.start)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert (await http.get("/api/health/ready")).status_code == 200
    async with client(redis) as pool:
        jobs = [await enqueue(pool, "echo", {"x": i}) for i in range(20, 40)]
        assert [(await job.result(timeout=30, poll_delay=0.05))["y"] for job in jobs] == \
            [2.0 * i for i in range(20, 40)]
    assert server.proc.poll() is None


async def test_ready_while_redis_is_down_then_serves_once_it_is_up(start_redis: StartRedis, start_hostd: Start) -> None:
    redis = start_redis(start=False)
    server = await serve(start_hostd, redis, [echo()])  # waits for /api/health/ready
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        await wait_logged(server, UNAVAILABLE, 1)  # arq's own retries make one attempt take seconds
        assert (await http.get("/api/health/ready")).status_code == 200
        assert (await http.post("/api/models/echo/prediction", json={"x": 4})).json() == {"y": 8.0, "text": ""}
    await anyio.to_thread.run_sync(redis.start)
    async with client(redis) as pool:
        job = await enqueue(pool, "echo", {"x": 9})
        assert await job.result(timeout=30, poll_delay=0.05) == {"y": 18.0, "text": ""}
