"""hostd run, served over real sockets: rest-model-service API, OIP v2 with tritonclient, shutdown."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_diabetes, load_digits
from tritonclient.utils import InferenceServerException

from tests.conftest import HostdProcess
from tests.support.e2e import (
    IRIS_FIELDS,
    REAL_MODELS,
    Start,
    diabetes_payload,
    echo,
    iris_payload,
    iris_rows,
    pending,
    post_held,
    refused,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def real(start_shared_hostd: Start) -> HostdProcess:
    """The three real models, shared by the tests that only predict."""
    return start_shared_hostd({"models": REAL_MODELS})


@pytest.fixture(scope="module")
def client(real: HostdProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url=f"127.0.0.1:{real.port}") as tc:
        yield tc


# -- the three real models ----------------------------------------------------------------------------


def test_real_models_are_listed_once_ready(start_hostd: Start) -> None:
    # How fast they load is for benchmarks/, not for a test on a shared machine.
    server = start_hostd({"models": REAL_MODELS})
    names = [(m["qualified_name"], m["deterministic"]) for m in httpx.get(f"{server.url}/api/models").json()["models"]]
    assert names == [("diabetes_model", False), ("digits_model", True), ("iris_model", True)]


def test_every_model_predicts_over_the_rest_api(real: Any) -> None:
    iris = httpx.post(f"{real.url}/api/models/iris_model/prediction", json=iris_payload(50))
    assert iris.status_code == 200 and iris.json() == {"species": "Iris versicolor"}

    digits = load_digits()
    image = digits.images[3].astype(int).tolist()
    response = httpx.post(f"{real.url}/api/models/digits_model/prediction", json={"image": image})
    assert response.status_code == 200
    assert response.json()["digit"] == digits.target[3] and 0 < response.json()["probability"] <= 1

    response = httpx.post(f"{real.url}/api/models/diabetes_model/prediction", json=diabetes_payload(0))
    assert response.status_code == 200
    prediction = response.json()
    assert set(prediction) == {"progression", "std", "sample"}
    assert 25 <= prediction["progression"] <= 346 and prediction["std"] > 0


def test_every_model_predicts_over_v2_json(real: Any) -> None:
    data, species = iris_rows()
    inputs = [{"name": name, "datatype": "FP64", "shape": [len(data)], "data": data[:, i].tolist()}
              for i, name in enumerate(IRIS_FIELDS)]
    response = httpx.post(f"{real.url}/v2/models/iris_model/infer", json={"id": "iris-1", "inputs": inputs})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "iris-1"
    assert response.json()["outputs"] == [{"name": "species", "datatype": "BYTES", "shape": [5], "data": species}]

    digits = load_digits()
    image = {"name": "image", "datatype": "INT64", "shape": [4, 8, 8], "data": digits.images[:4].astype(int).tolist()}
    response = httpx.post(f"{real.url}/v2/models/digits_model/infer", json={"inputs": [image]})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["digit"]["data"] == digits.target[:4].tolist()
    assert outputs["probability"]["datatype"] == "FP64" and outputs["probability"]["shape"] == [4]

    # All ten diabetes inputs are numbers, so one [rows, 10] tensor in schema field order also works.
    rows = load_diabetes(scaled=False).data[:3]
    tensor = {"name": "input__0", "datatype": "FP64", "shape": [3, 10], "data": rows.tolist()}
    response = httpx.post(f"{real.url}/v2/models/diabetes_model/infer", json={"inputs": [tensor]})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert set(outputs) == {"progression", "std", "sample"}
    assert all(len(o["data"]) == 3 for o in outputs.values())
    one = httpx.post(f"{real.url}/api/models/diabetes_model/prediction", json=diabetes_payload(1)).json()
    assert outputs["progression"]["data"][1] == pytest.approx(one["progression"])


# -- the real tritonclient ------------------------------------------------------------------------------


def test_tritonclient_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris_model")
    assert client.is_model_ready("digits_model", model_version="1.0.0")
    assert not client.is_model_ready("nope")
    metadata = client.get_model_metadata("iris_model")
    assert metadata["name"] == "iris_model"
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [(name, "FP64") for name in IRIS_FIELDS]
    assert metadata["outputs"] == [{"name": "species", "datatype": "BYTES", "shape": [-1]}]
    digits = client.get_model_metadata("digits_model")
    assert digits["inputs"] == [{"name": "image", "datatype": "INT64", "shape": [-1, 8, 8]}]
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data", "model_repository"]


@pytest.mark.parametrize(("datatype", "dtype"), [("FP32", np.float32), ("FP64", np.float64)])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infers_iris(client: triton.InferenceServerClient, datatype: str, dtype: Any,
                                  binary: bool) -> None:
    data, species = iris_rows()
    inputs = []
    for i, name in enumerate(IRIS_FIELDS):
        tensor = triton.InferInput(name, [len(data)], datatype)
        tensor.set_data_from_numpy(data[:, i].astype(dtype), binary_data=binary)
        inputs.append(tensor)
    result = client.infer("iris_model", inputs, outputs=[triton.InferRequestedOutput("species", binary_data=binary)],
                          request_id="batch-5")
    assert result.get_response()["id"] == "batch-5"
    # tritonclient gives bytes for binary BYTES outputs and str for JSON ones.
    names = [value.decode() if binary else value for value in result.as_numpy("species")]
    assert names == species


def test_tritonclient_iris_column_tensors_shaped_n_by_1(client: triton.InferenceServerClient) -> None:
    data, species = iris_rows()
    inputs = []
    for i, name in enumerate(IRIS_FIELDS):
        tensor = triton.InferInput(name, [len(data), 1], "FP32")
        tensor.set_data_from_numpy(data[:, i:i + 1].astype(np.float32))
        inputs.append(tensor)
    result = client.infer("iris_model", inputs)  # no outputs named: every output, binary
    assert [value.decode() for value in result.as_numpy("species")] == species


def test_tritonclient_infers_digits_from_an_int64_image_tensor(client: triton.InferenceServerClient) -> None:
    digits = load_digits()
    images = digits.images[:10].astype(np.int64)
    tensor = triton.InferInput("image", list(images.shape), "INT64")
    tensor.set_data_from_numpy(images)
    result = client.infer("digits_model", [tensor])
    assert result.as_numpy("digit").tolist() == digits.target[:10].tolist()
    probability = result.as_numpy("probability")
    assert probability.dtype == np.float64 and ((probability > 0) & (probability <= 1)).all()


def test_tritonclient_sees_errors_with_status_and_message(client: triton.InferenceServerClient) -> None:
    values = np.array([5.1, 50.0], dtype=np.float64)  # 50 cm is out of bounds
    inputs = []
    for name in IRIS_FIELDS:
        tensor = triton.InferInput(name, [2], "FP64")
        tensor.set_data_from_numpy(values if name == "sepal_length" else np.array([3.0, 3.0]))
        inputs.append(tensor)
    with pytest.raises(InferenceServerException) as info:
        client.infer("iris_model", inputs)
    assert str(info.value.status()) == "400" and "1.sepal_length" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", inputs)
    assert str(info.value.status()) == "404" and "nope" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("iris_model", inputs, model_version="9.9.9")
    assert str(info.value.status()) == "404" and "9.9.9" in info.value.message()
    words = triton.InferInput("sepal_length", [1], "BYTES")
    words.set_data_from_numpy(np.array([b"long"], dtype=object))
    with pytest.raises(InferenceServerException) as info:
        client.infer("iris_model", [words])
    assert str(info.value.status()) == "400" and "sepal_length" in info.value.message()
    assert client.is_server_ready()


# -- bad requests get the right status and a message naming the problem --------------------------------


def test_bad_requests_get_the_right_status_and_the_server_keeps_serving(start_hostd: Start) -> None:
    server = start_hostd({"models": [*REAL_MODELS[:1], echo()]})
    url = server.url
    good = iris_payload(0)
    big = orjson.dumps({**good, "padding": "x" * (1 << 20)})
    cases: list[tuple[str, str, dict[str, Any], int, str, list[str]]] = [
        ("wrong type", "/api/models/iris_model/prediction", {"json": {**good, "sepal_width": "wide"}},
         400, "INVALID_INPUT", ["sepal_width", "valid number"]),
        ("missing field", "/api/models/iris_model/prediction",
         {"json": {k: v for k, v in good.items() if k != "petal_width"}}, 400, "INVALID_INPUT",
         ["petal_width", "Field required"]),
        ("out of bounds", "/api/models/iris_model/prediction", {"json": {**good, "petal_length": 70}},
         400, "INVALID_INPUT", ["petal_length", "less than or equal to 7.5"]),
        ("extra field", "/api/models/iris_model/prediction", {"json": {**good, "colour": "blue"}},
         400, "INVALID_INPUT", ["colour"]),
        ("unknown model", "/api/models/lily_model/prediction", {"json": good}, 404, "MODEL_NOT_FOUND",
         ["lily_model"]),
        ("unknown version", "/api/models/iris_model/prediction?version=9.9.9", {"json": good}, 404,
         "MODEL_NOT_FOUND", ["9.9.9"]),
        ("malformed JSON", "/api/models/iris_model/prediction",
         {"content": b'{"sepal_length": 5.1,', "headers": {"content-type": "application/json"}}, 400,
         "INVALID_INPUT", ["JSON"]),
        ("oversize body", "/api/models/iris_model/prediction", {"content": big}, 413, "PAYLOAD_TOO_LARGE",
         [str(1 << 20)]),
        ("model raises", "/api/models/echo/prediction", {"json": {"x": 1, "fail": True}}, 500, "MODEL_ERROR",
         ["echo", "asked to fail"]),
    ]
    with httpx.Client(timeout=10) as http:
        for name, path, request, status, code, words in cases:
            response = http.post(f"{url}{path}", **request)
            assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
            body = response.json()
            assert body["type"] == code, name
            text = " ".join(body["messages"])
            assert all(word in text for word in words), f"{name}: {text}"
            after = http.post(f"{url}/api/models/iris_model/prediction", json=good)
            assert after.status_code == 200 and after.json() == {"species": "Iris setosa"}, name
        assert http.get(f"{url}/api/health/ready").status_code == 200
    assert server.proc.poll() is None


def test_bad_v2_requests_get_the_right_status(start_hostd: Start) -> None:
    server = start_hostd({"models": [*REAL_MODELS[:1], echo()]})
    columns = [{"name": name, "datatype": "FP64", "shape": [1], "data": [value]}
               for name, value in iris_payload(0).items()]
    cases: list[tuple[str, str, dict[str, Any], int, list[str]]] = [
        ("wrong datatype", "/v2/models/iris_model/infer",
         {"json": {"inputs": [{**columns[0], "datatype": "BYTES", "data": ["long"]}, *columns[1:]]}}, 400,
         ["sepal_length", "BYTES"]),
        ("missing field", "/v2/models/iris_model/infer", {"json": {"inputs": columns[:3]}}, 400,
         ["petal_width", "Field required"]),
        ("out of bounds", "/v2/models/iris_model/infer",
         {"json": {"inputs": [{**columns[0], "data": [100.0]}, *columns[1:]]}}, 400, ["sepal_length"]),
        ("unknown output", "/v2/models/iris_model/infer",
         {"json": {"inputs": columns, "outputs": [{"name": "genus"}]}}, 400, ["genus", "species"]),
        ("unknown model", "/v2/models/lily_model/infer", {"json": {"inputs": columns}}, 404, ["lily_model"]),
        ("unknown version", "/v2/models/iris_model/versions/0.0.1/infer", {"json": {"inputs": columns}}, 404,
         ["0.0.1"]),
        ("malformed JSON", "/v2/models/iris_model/infer", {"content": b'{"inputs": ['}, 400, ["JSON"]),
        ("oversize body", "/v2/models/iris_model/infer", {"content": b"[" + b" " * (1 << 20) + b"]"}, 413,
         [str(1 << 20)]),
        ("model raises", "/v2/models/echo/infer",
         {"json": {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]},
                              {"name": "fail", "datatype": "BOOL", "shape": [1], "data": [True]}]}}, 500,
         ["echo", "asked to fail"]),
    ]
    with httpx.Client(timeout=10) as http:
        for name, path, request, status, words in cases:
            response = http.post(f"{server.url}{path}", **request)
            assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
            message = response.json()["error"]
            assert all(word in message for word in words), f"{name}: {message}"
            after = http.post(f"{server.url}/v2/models/iris_model/infer", json={"inputs": columns})
            assert after.status_code == 200 and after.json()["outputs"][0]["data"] == ["Iris setosa"], name


# -- rest-model-service configurations and ml_base models -----------------------------------------------


REST_MODEL_SERVICE_CONFIG = """\
service_title: Iris Model Service
description: "Service hosting the Iris Model"
version: "0.1.0"
models:
  - class_path: iris_model.model.IrisModel
    create_endpoint: true
    configuration:
    decorators:
  - class_path: tests.support.toy.EchoModel
    create_endpoint: false
    configuration: null
    decorators:
      - class_path: tests.support.toy.PlusOne
        configuration:
          amount: 10
"""


def test_rest_model_service_config_is_served_on_http(start_hostd: Start) -> None:
    # No transports section: the port comes from the environment (HOSTD_TRANSPORTS__HTTP__PORT).
    server = start_hostd(REST_MODEL_SERVICE_CONFIG)
    url = server.url
    models = httpx.get(f"{url}/api/models").json()["models"]
    assert [m["qualified_name"] for m in models] == ["echo", "iris_model"]
    response = httpx.post(f"{url}/api/models/iris_model/prediction", json=iris_payload(100))
    assert response.status_code == 200 and response.json() == {"species": "Iris virginica"}
    # create_endpoint: false loads the model (it is listed) but serves no predictions.
    hidden = httpx.post(f"{url}/api/models/echo/prediction", json={"x": 1})
    assert hidden.status_code == 404 and hidden.json()["type"] == "MODEL_NOT_FOUND"
    assert httpx.get(f"{url}/openapi.json").json()["info"]["title"] == "Iris Model Service"
    assert server.stop() == 0


def test_config_as_the_rest_model_service_readme_writes_it_loads(start_hostd: Start) -> None:
    # Every rest-model-service README example names each model's qualified_name.
    text = """\
service_title: REST Model Service With Decorators
models:
  - qualified_name: iris_model
    class_path: iris_model.model.IrisModel
    create_endpoint: true
    decorators: []
"""
    server = start_hostd(text)
    response = httpx.post(f"{server.url}/api/models/iris_model/prediction", json=iris_payload(0))
    assert response.status_code == 200 and response.json() == {"species": "Iris setosa"}
    assert server.stop() == 0


def test_ml_base_model_with_ml_base_decorator_is_served(start_hostd: Start) -> None:
    server = start_hostd({"models": [{
        "class_path": "tests.support.toy_http:GreetModel",
        "configuration": {"greeting": "Hi"},
        "decorators": [{"class_path": "tests.support.toy_http:Exclaim", "configuration": {"suffix": "!!"}}],
    }]})
    metadata = httpx.get(f"{server.url}/api/models/greeter/metadata").json()
    assert (metadata["display_name"], metadata["version"]) == ("Greeter", "0.3.1")
    assert metadata["input_schema"]["required"] == ["name"]
    response = httpx.post(f"{server.url}/api/models/greeter/prediction", json={"name": "Ada"})
    assert response.status_code == 200 and response.json() == {"greeting": "Hi, Ada!!"}
    request = {"inputs": [{"name": "name", "datatype": "BYTES", "shape": [2], "data": ["Ada", "Alan"]}]}
    response = httpx.post(f"{server.url}/v2/models/greeter/infer", json=request)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == ["Hi, Ada!!", "Hi, Alan!!"]
    invalid = httpx.post(f"{server.url}/api/models/greeter/prediction", json={"name": ""})
    assert invalid.status_code == 400 and "name" in invalid.json()["messages"][0]


# -- shutdown and concurrency -------------------------------------------------------------------------


def test_sigterm_answers_every_request_in_flight_then_exits_0(start_hostd: Start, tmp_path: Path) -> None:
    server = start_hostd({"models": [echo(workers=32)], "shutdown_grace_s": 10})
    count = 20
    gate = tmp_path / "gate"  # the requests stay in the model until the test creates it

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(post_held, server.url, gate, i) for i in range(count)]
        wait_for(lambda: pending(server.url) >= count, f"the {count} requests never reached the model")
        server.proc.send_signal(signal.SIGTERM)
        # Draining: the listening socket closes while the accepted requests are still in the model.
        wait_for(lambda: refused(server.port), "still accepting connections after SIGTERM")
        assert not any(future.done() for future in futures)
        gate.touch()
        results = [future.result(timeout=60) for future in futures]
    assert results == [(200, {"y": 2.0 * i, "text": ""}) for i in range(count)]
    assert server.proc.wait(15) == 0
    assert refused(server.port)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/api/health", timeout=2)


def test_cpu_heavy_request_does_not_block_health(start_hostd: Start, tmp_path: Path) -> None:
    server = start_hostd({"models": [{"class_path": "tests.support.toy_http:GatedSpin", "timeout_ms": 40_000}]})
    gate = tmp_path / "gate"  # the model burns CPU, holding the GIL most of the time, until it exists
    with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=10) as http:
        spinning = pool.submit(httpx.post, f"{server.url}/api/models/echo/prediction",
                               json={"x": 1, "gate": str(gate)}, timeout=60)
        wait_for(lambda: pending(server.url) >= 1, "the CPU-heavy request never reached the model")
        # Were the event loop blocked by the model, health would not answer until the gate opens.
        for _ in range(5):
            response = http.get(f"{server.url}/api/health")
            assert response.status_code == 200 and response.json() == {"health_status": "HEALTHY"}
        assert not spinning.done()
        gate.touch()
        assert spinning.result(timeout=60).json() == {"y": 2.0, "text": "True"}
