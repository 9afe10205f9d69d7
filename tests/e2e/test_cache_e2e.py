"""The prediction cache against real hostd processes: one entry per input whatever the transport, field
order or number spelling; skipping it (Cache-Control: no-cache); models it must refuse; a Redis cache
shared by two hostd that survives a Redis outage; and entries that go with an unloaded model."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import orjson
import pytest
import redis
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris
from websockets.asyncio.client import connect

from tests.conftest import HOSTD, ROOT, HostdProcess
from tests.e2e.brokers import Reader, StartRedis, StartTansu, Topics, produce, request
from tests.support.e2e import IRIS_FIELDS, IRIS_ROWS, PATIENCE_S, Start, diabetes_payload, iris_payload

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

IRIS = {"class_path": "iris_model.model:IrisModel"}
CACHED_IRIS = {**IRIS, "cache": {"max_entries": 100}}
VERSION = "1.0.0"
#: Row 4 of the iris data set: 5.0, 3.6, 1.4, 0.2 (sepal_length can travel as the integer 5).
ROW = 4


# -- helpers ---------------------------------------------------------------------------------------------


def sample(server: HostdProcess, name: str, **labels: str) -> float:
    """The value of a /metrics sample with exactly these labels (0 if there is none yet)."""
    text = httpx.get(f"{server.url}/metrics", timeout=PATIENCE_S).text
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


def lookups(server: HostdProcess, result: str) -> float:
    """Rows the iris cache has looked up with this result ("hit" or "miss")."""
    return sample(server, "hostd_cache_lookups_total", model="iris_model", version=VERSION, result=result)


def cache_gauge(server: HostdProcess, name: str) -> float:
    return sample(server, f"hostd_cache_{name}", model="iris_model", version=VERSION)


def rows_predicted(server: HostdProcess, model: str = "iris_model") -> float:
    """Rows the model itself was called with (a cache hit costs it nothing)."""
    return sample(server, "hostd_request_rows_sum", model=model)


def shuffled_with_ints(data: dict[str, float]) -> dict[str, float | int]:
    """The same input as another client might write it: fields reversed, whole numbers without '.0'."""
    return {name: int(value) if float(value).is_integer() else value for name, value in reversed(data.items())}


def predict(server: HostdProcess, data: dict[str, Any], **headers: str) -> httpx.Response:
    response = httpx.post(f"{server.url}/api/models/iris_model/prediction", json=data, headers=headers,
                          timeout=PATIENCE_S)
    assert response.status_code == 200, response.text
    return response


def v2_columns(rows: list[int]) -> list[dict[str, Any]]:
    """Iris rows of the data set as the four FP64 input tensors of an OIP v2 request."""
    data = load_iris().data[rows]
    return [{"name": name, "datatype": "FP64", "shape": [len(rows)], "data": data[:, i].tolist()}
            for i, name in enumerate(IRIS_FIELDS)]


def other_iris_rows() -> list[int]:
    """Indexes of iris rows unlike each other and unlike every row of IRIS_ROWS (the data set repeats a
    few flowers)."""
    data = load_iris().data.tolist()
    seen = {tuple(data[index]) for index in IRIS_ROWS}
    rows = []
    for index, row in enumerate(data):
        if tuple(row) not in seen:
            seen.add(tuple(row))
            rows.append(index)
    return rows


# -- one entry, whatever the transport ------------------------------------------------------------------


def grpc_infer(target: str, data: dict[str, float | int]) -> tuple[str, bool]:
    """One row over gRPC with tritonclient, a tensor per field in ``data``'s order, an int field as INT64;
    the species and the response's ``cached`` parameter."""
    inputs = []
    for name, value in data.items():
        datatype = "INT64" if isinstance(value, int) else "FP64"
        tensor = triton.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(np.array([value], dtype=np.int64 if datatype == "INT64" else np.float64))
        inputs.append(tensor)
    with triton.InferenceServerClient(url=target) as client:
        result = client.infer("iris_model", inputs)
    parameters = result.get_response().parameters
    assert "cached" in parameters, "a model with a cache says whether it answered"
    return result.as_numpy("species")[0].decode(), parameters["cached"].bool_param


async def test_equal_inputs_over_http_grpc_websocket_and_kafka_share_one_entry(start_tansu: StartTansu,
                                                                              start_hostd: Start) -> None:
    broker = start_tansu()
    topics = Topics.named("cache")
    await topics.create(broker.bootstrap)
    config = {"models": [CACHED_IRIS], "transports": {"http": {}, "grpc": {}, "ws": {},
                                                      "kafka": topics.transport(broker.bootstrap)}}
    server = await anyio.to_thread.run_sync(lambda: start_hostd(config))
    data, other_spelling = iris_payload(ROW), shuffled_with_ints(iris_payload(ROW))
    assert isinstance(other_spelling["sepal_length"], int) and list(other_spelling) != list(data)

    first = await anyio.to_thread.run_sync(predict, server, data)
    assert (first.headers["X-Cache"], first.json()) == ("MISS", {"species": IRIS_ROWS[ROW]})

    target = f"127.0.0.1:{server.transports['grpc']['port']}"
    assert await anyio.to_thread.run_sync(grpc_infer, target, other_spelling) == (IRIS_ROWS[ROW], True)

    ws_url = f"ws://127.0.0.1:{server.transports['ws']['port']}"
    async with connect(ws_url, open_timeout=10, close_timeout=2, proxy=None) as ws:
        await ws.send(orjson.dumps({"id": "ws-1", "model": "iris_model", "data": other_spelling}).decode())
        with anyio.fail_after(10):
            reply = orjson.loads(await ws.recv())
    assert reply == {"id": "ws-1", "model": "iris_model", "version": VERSION,
                     "prediction": {"species": IRIS_ROWS[ROW]}, "cached": True}

    await produce(broker.bootstrap, topics.input, [(b"k", request("kafka-1", "iris_model", other_spelling))])
    async with Reader(broker.bootstrap, topics.output, topics.dead_letter) as reader:
        await reader.until(lambda: "kafka-1" in reader.answered, PATIENCE_S, "the Kafka reply")
    [record] = reader.records
    assert record.topic == topics.output
    assert orjson.loads(record.value) == {"id": "kafka-1", "model": "iris_model", "version": VERSION,
                                          "prediction": {"species": IRIS_ROWS[ROW]}, "cached": True}

    def counts() -> tuple[float, float, float, float]:
        return lookups(server, "miss"), lookups(server, "hit"), cache_gauge(server, "entries"), rows_predicted(server)

    # One row looked up per request: the first missed, the three others found its one entry.
    assert await anyio.to_thread.run_sync(counts) == (1, 3, 1, 1)


# -- skipping the cache, and requests of several rows ---------------------------------------------------


@pytest.fixture
def cached_iris(start_hostd: Start) -> HostdProcess:
    return start_hostd({"models": [CACHED_IRIS]})


def test_cache_control_no_cache_gets_the_models_answer_and_the_next_request_a_hit(cached_iris: HostdProcess) -> None:
    data = iris_payload(0)
    assert predict(cached_iris, data).headers["X-Cache"] == "MISS"
    assert predict(cached_iris, data).headers["X-Cache"] == "HIT"
    assert rows_predicted(cached_iris) == 1

    for control in ("no-cache", "no-store", "max-age=0, no-cache"):
        fresh = predict(cached_iris, data, **{"Cache-Control": control})
        assert (fresh.headers["X-Cache"], fresh.json()) == ("MISS", {"species": IRIS_ROWS[0]}), control
    assert rows_predicted(cached_iris) == 4, "each request that skipped the cache was answered by the model"

    again = predict(cached_iris, data)
    assert (again.headers["X-Cache"], again.json()) == ("HIT", {"species": IRIS_ROWS[0]})
    assert rows_predicted(cached_iris) == 4


def test_an_answer_fetched_with_no_cache_is_stored_for_the_next_request(cached_iris: HostdProcess) -> None:
    data = iris_payload(50)
    assert predict(cached_iris, data, **{"Cache-Control": "no-cache"}).headers["X-Cache"] == "MISS"
    assert predict(cached_iris, data).headers["X-Cache"] == "HIT", "the fresh answer was not stored"
    assert rows_predicted(cached_iris) == 1


def test_a_v2_request_with_one_new_row_of_three_is_a_miss_that_costs_the_model_one_row(
        cached_iris: HostdProcess) -> None:
    url = f"{cached_iris.url}/v2/models/iris_model/infer"
    seen = httpx.post(url, json={"inputs": v2_columns([0, 50])}, timeout=PATIENCE_S)
    assert (seen.status_code, seen.headers["X-Cache"], seen.json()["parameters"]) == (200, "MISS", {"cached": False})
    misses, hits, rows = lookups(cached_iris, "miss"), lookups(cached_iris, "hit"), rows_predicted(cached_iris)
    assert (misses, hits, rows) == (2, 0, 2)

    mixed = httpx.post(url, json={"inputs": v2_columns([100, 0, 50])}, timeout=PATIENCE_S)
    assert mixed.status_code == 200, mixed.text
    assert (mixed.headers["X-Cache"], mixed.json()["parameters"]) == ("MISS", {"cached": False})
    # The model's answer and the cache's are merged back in the request's row order.
    assert mixed.json()["outputs"][0]["data"] == [IRIS_ROWS[100], IRIS_ROWS[0], IRIS_ROWS[50]]
    assert lookups(cached_iris, "miss") == misses + 1
    assert lookups(cached_iris, "hit") == hits + 2
    assert rows_predicted(cached_iris) == rows + 1, "only the new row went to the model"

    known = httpx.post(url, json={"inputs": v2_columns([50, 100])}, timeout=PATIENCE_S)
    assert (known.headers["X-Cache"], known.json()["parameters"]) == ("HIT", {"cached": True})
    assert known.json()["outputs"][0]["data"] == [IRIS_ROWS[50], IRIS_ROWS[100]]
    assert rows_predicted(cached_iris) == rows + 1


# -- models that must not be cached ---------------------------------------------------------------------

DIABETES = "models:\n  - class_path: diabetes_model.model:DiabetesModel\n"


def hostd_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HOSTD, "check", str(config)], cwd=ROOT, capture_output=True, text=True,
                          timeout=PATIENCE_S, check=False)


def test_hostd_check_refuses_a_cache_on_a_model_that_is_not_deterministic(tmp_path: Path) -> None:
    config = tmp_path / "host.yaml"
    config.write_text(DIABETES + "    cache: {max_entries: 10}\n")
    refused = hostd_check(config)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert re.search(r"host\.yaml:3\b", output), f"the error names the cache: line\n{output}"
    assert "diabetes_model" in output and "not deterministic" in output, output

    config.write_text(DIABETES)  # the same model without a cache is fine
    accepted = hostd_check(config)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "deterministic=false" in accepted.stdout


def test_a_model_without_a_cache_never_says_whether_it_was_cached(start_hostd: Start) -> None:
    server = start_hostd({"models": [CACHED_IRIS, {"class_path": "diabetes_model.model:DiabetesModel"}]})
    data = diabetes_payload(0)
    columns = [{"name": name, "datatype": "FP64", "shape": [1], "data": [value]} for name, value in data.items()]
    for _ in range(2):  # the same input twice: the second would be a hit if it were cached
        author = httpx.post(f"{server.url}/api/models/diabetes_model/prediction", json=data, timeout=PATIENCE_S)
        assert author.status_code == 200 and "X-Cache" not in author.headers, author.headers
        v2 = httpx.post(f"{server.url}/v2/models/diabetes_model/infer", json={"inputs": columns}, timeout=PATIENCE_S)
        assert v2.status_code == 200 and "X-Cache" not in v2.headers, v2.headers
        assert "cached" not in v2.json().get("parameters", {}), v2.json()
    assert rows_predicted(server, "diabetes_model") == 4
    assert "X-Cache" in predict(server, iris_payload(0)).headers, "the cached model in the same hostd says so"


# -- the Redis backend ----------------------------------------------------------------------------------


def cache_keys(client: redis.Redis) -> list[str]:
    return sorted(key.decode() for key in client.scan_iter(match="hostd:cache:*"))


def test_a_redis_cache_is_shared_by_two_hostd_and_a_redis_outage_only_turns_it_off(
        start_redis: StartRedis, start_hostd: Start) -> None:
    broker = start_redis()
    config = {"models": [{**IRIS, "cache": {"backend": "redis", "redis_url": broker.url}}]}
    a, b = start_hostd(config), start_hostd(config)
    client = redis.Redis.from_url(broker.url, socket_timeout=5)
    first, *during_outage = IRIS_ROWS  # rows whose species the test knows
    try:
        assert predict(a, iris_payload(first)).headers["X-Cache"] == "MISS"
        # A stores in the background, after it has answered.
        deadline = time.monotonic() + PATIENCE_S
        while not (keys := cache_keys(client)):
            assert time.monotonic() < deadline, "A never stored its answer in Redis"
            time.sleep(0.02)
        assert len(keys) == 1 and re.fullmatch(rf"hostd:cache:iris_model:{VERSION}:[0-9a-f]{{16}}:[0-9a-f]{{40}}",
                                                  keys[0]), keys  # ...:<the model's fingerprint>:<the row's>
        shared = predict(b, shuffled_with_ints(iris_payload(first)))
        assert (shared.headers["X-Cache"], shared.json()) == ("HIT", {"species": IRIS_ROWS[first]})
        assert rows_predicted(b) == 0, "B answered from A's entry without its model"

        broker.stop()
        for server, row in zip((a, b, a, b), during_outage, strict=True):  # answered by the model, none failed
            answer = predict(server, iris_payload(row))
            assert (answer.headers["X-Cache"], answer.json()) == ("MISS", {"species": IRIS_ROWS[row]})
        assert cache_gauge(a, "errors_total") > 0 and cache_gauge(b, "errors_total") > 0

        broker.start()  # on the same port, empty (no persistence)
        # Each hostd leaves Redis alone for a second after a failure; then a row answered by A is one B
        # has never seen, so a hit on B can only be A's entry.
        deadline = time.monotonic() + PATIENCE_S
        for row in other_iris_rows():
            assert predict(a, iris_payload(row)).headers["X-Cache"] == "MISS"
            if predict(b, iris_payload(row)).headers["X-Cache"] == "HIT":
                break
            assert time.monotonic() < deadline, "the cache never came back after Redis did"
            time.sleep(0.1)
        else:
            raise AssertionError("the cache never came back after Redis did (every row used)")
    finally:
        client.close()


# -- unloading ------------------------------------------------------------------------------------------


def test_unloading_a_model_drops_its_entries(start_hostd: Start) -> None:
    server = start_hostd({"models": [CACHED_IRIS], "admin": {"enabled": True}})
    data = iris_payload(100)
    assert [predict(server, data).headers["X-Cache"] for _ in range(2)] == ["MISS", "HIT"]
    assert cache_gauge(server, "entries") == 1

    for action in ("unload", "load"):
        reply = httpx.post(f"{server.url}/v2/repository/models/iris_model/{action}", timeout=PATIENCE_S)
        assert reply.status_code == 200, reply.text
    assert cache_gauge(server, "entries") == 0

    reloaded = predict(server, data)
    assert (reloaded.headers["X-Cache"], reloaded.json()) == ("MISS", {"species": IRIS_ROWS[100]})
    assert predict(server, data).headers["X-Cache"] == "HIT"
