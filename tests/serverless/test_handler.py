"""The AWS Lambda handler (plugins/hostd_lambda/handler.py), invoked with the events AWS sends it.

Mangum runs the app on its own event loop, so every invocation here is a plain synchronous call,
as the Lambda runtime makes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.serverless.events import KINDS, Context, Kind, Reply, event, reply

ROOT = Path(__file__).resolve().parents[2]
HOST_YAML = ROOT / "host.yaml"
TOY = "tests.support.toy"
JSON = "application/json"
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}
LOAD_FAILURE = "FileNotFoundError: parameters.skops is missing"  # what tests.support.toy:FailsToLoad raises
Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


@pytest.fixture(scope="module", autouse=True)
def lambda_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The main thread's event loop that Mangum runs every invocation on; closed afterwards so no later
    test inherits it (a Lambda process starts without one; the subprocess tests cover that)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture(scope="module")
def create_handler() -> Callable[[Path | str], Handler]:
    # Importing the module builds its own handler from $HOSTD_CONFIG: point that at the repo's config,
    # so the import does the same wherever pytest runs from.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HOSTD_CONFIG", str(HOST_YAML))
        from hostd_lambda.handler import create_handler
    return create_handler


@pytest.fixture(scope="module")
def handler(create_handler: Callable[[Path | str], Handler]) -> Handler:
    """The function as deployed with the repo's host.yaml: iris, digits and diabetes models."""
    return create_handler(HOST_YAML)


@pytest.fixture(scope="module")
def toy_handler(create_handler: Callable[[Path | str], Handler], tmp_path_factory: pytest.TempPathFactory) -> Handler:
    """An echo model that can be told to fail, behind a 2 KiB request limit."""
    path = tmp_path_factory.mktemp("toy") / "host.yaml"
    path.write_text(f"models:\n  - class_path: {TOY}:EchoModel\ntransports:\n  http: {{max_request_bytes: 2048}}\n")
    return create_handler(path)


@pytest.fixture(scope="module")
def failing_handler(create_handler: Callable[[Path | str], Handler],
                    tmp_path_factory: pytest.TempPathFactory) -> Handler:
    path = tmp_path_factory.mktemp("failing") / "host.yaml"
    path.write_text(f"models:\n  - class_path: {TOY}:EchoModel\n  - class_path: {TOY}:FailsToLoad\n")
    return create_handler(path)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def digit_three() -> list[list[int]]:
    """The first 3 in scikit-learn's bundled digits data set (the model was trained on that set)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = int(np.flatnonzero(digits.target == 3)[0])
    return [[int(pixel) for pixel in row] for row in digits.images[index]]


def invoke(handler: Handler, kind: Kind, method: str, path: str, *, payload: Any = None, body: bytes | None = None,
           query: dict[str, list[str]] | None = None, headers: dict[str, str] | None = None,
           base64_body: bool = False) -> Reply:
    if payload is not None:
        body = json.dumps(payload).encode()
    return reply(handler(event(kind, method, path, body=body, query=query, headers=headers,
                               base64_body=base64_body), Context()))


def ok(response: Reply) -> Any:
    assert response.status == 200, response.body
    assert response.content_type == JSON
    return response.json()


def rest_error(response: Reply, status: int, code: str) -> str:
    """Check a rest-model-service error; return its messages joined."""
    assert response.status == status, response.body
    assert response.content_type == JSON
    body = response.json()
    assert set(body) == {"type", "messages"}
    assert body["type"] == code
    assert body["messages"] and all(isinstance(message, str) and message for message in body["messages"])
    return " | ".join(body["messages"])


def v2_error(response: Reply, status: int, code: str) -> dict[str, Any]:
    """Check an OIP v2 error; return its body."""
    assert response.status == status, response.body
    assert response.content_type == JSON
    body = response.json()
    assert set(body) == {"error", "code", "details"}
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    return body  # type: ignore[no-any-return]


def is_v2(path: str) -> bool:
    """Whether ``path`` is OIP v2's (answers errors as {"error", "code", "details"})."""
    return path == "/v2" or path.startswith("/v2/")


def iris_tensors(row: dict[str, float]) -> list[dict[str, Any]]:
    return [{"name": name, "datatype": "FP64", "shape": [1], "data": [value]} for name, value in row.items()]


# --- the served API, through each kind of event ---------------------------------------------------------------


def test_lists_the_three_models(handler: Handler, kind: Kind) -> None:
    models = ok(invoke(handler, kind, "GET", "/api/models"))["models"]
    assert sorted(model["qualified_name"] for model in models) == ["diabetes_model", "digits_model", "iris_model"]
    iris = next(model for model in models if model["qualified_name"] == "iris_model")
    assert iris == {"display_name": "Iris Model", "qualified_name": "iris_model", "version": "1.0.0",
                    "deterministic": True, "description": iris["description"]}
    assert "iris" in iris["description"]


def test_rest_metadata_has_the_input_and_output_schemas(handler: Handler, kind: Kind) -> None:
    metadata = ok(invoke(handler, kind, "GET", "/api/models/iris_model/metadata"))
    assert metadata["qualified_name"] == "iris_model"
    assert metadata["version"] == "1.0.0"
    assert set(metadata["input_schema"]["properties"]) == set(SETOSA)
    assert metadata["output_schema"]["properties"]["species"]


def test_rest_metadata_reads_the_version_from_the_query_string(handler: Handler, kind: Kind) -> None:
    metadata = ok(invoke(handler, kind, "GET", "/api/models/iris_model/metadata", query={"version": ["1.0.0"]}))
    assert metadata["version"] == "1.0.0"
    message = rest_error(invoke(handler, kind, "GET", "/api/models/iris_model/metadata", query={"version": ["9.9"]}),
                         404, "MODEL_NOT_FOUND")
    assert "9.9" in message


def test_v2_metadata_describes_the_tensors(handler: Handler, kind: Kind) -> None:
    metadata = ok(invoke(handler, kind, "GET", "/v2/models/iris_model"))
    assert metadata["name"] == "iris_model"
    assert metadata["versions"] == ["1.0.0"]
    assert metadata["inputs"] == [{"name": name, "datatype": "FP64", "shape": [-1]} for name in SETOSA]
    assert metadata["outputs"] == [{"name": "species", "datatype": "BYTES", "shape": [-1]}]
    versioned = ok(invoke(handler, kind, "GET", "/v2/models/iris_model/versions/1.0.0"))
    assert versioned == metadata


def test_iris_prediction(handler: Handler, kind: Kind) -> None:
    path = "/api/models/iris_model/prediction"
    assert ok(invoke(handler, kind, "POST", path, payload=SETOSA)) == {"species": "Iris setosa"}
    assert ok(invoke(handler, kind, "POST", path, payload=VIRGINICA)) == {"species": "Iris virginica"}


def test_digits_prediction_of_a_real_handwritten_three(handler: Handler, kind: Kind,
                                                       digit_three: list[list[int]]) -> None:
    prediction = ok(invoke(handler, kind, "POST", "/api/models/digits_model/prediction",
                           payload={"image": digit_three}))
    assert prediction["digit"] == 3
    assert 0.5 < prediction["probability"] <= 1


def test_a_base64_encoded_body_is_decoded(handler: Handler, kind: Kind) -> None:
    response = invoke(handler, kind, "POST", "/api/models/iris_model/prediction", payload=SETOSA, base64_body=True)
    assert ok(response) == {"species": "Iris setosa"}
    inference = {"inputs": iris_tensors(VIRGINICA)}
    response = invoke(handler, kind, "POST", "/v2/models/iris_model/infer", payload=inference, base64_body=True)
    assert ok(response)["outputs"][0]["data"] == ["Iris virginica"]


def test_invalid_input_is_400_naming_the_field(handler: Handler, kind: Kind) -> None:
    path = "/api/models/iris_model/prediction"
    message = rest_error(invoke(handler, kind, "POST", path, payload={**SETOSA, "sepal_length": 99}),
                         400, "INVALID_INPUT")
    assert message.startswith("sepal_length: ")
    missing = {name: value for name, value in SETOSA.items() if name != "petal_width"}
    assert rest_error(invoke(handler, kind, "POST", path, payload=missing), 400, "INVALID_INPUT") == \
        "petal_width: Field required"
    message = rest_error(invoke(handler, kind, "POST", path, body=b"{not json"), 400, "INVALID_INPUT")
    assert "not valid JSON" in message


def test_unknown_model_is_404_in_both_error_formats(handler: Handler, kind: Kind) -> None:
    for method, path in [("GET", "/api/models/nope/metadata"), ("POST", "/api/models/nope/prediction")]:
        message = rest_error(invoke(handler, kind, method, path, payload=SETOSA), 404, "MODEL_NOT_FOUND")
        assert "'nope'" in message
    inference = {"inputs": iris_tensors(SETOSA)}
    for method, path in [("GET", "/v2/models/nope"), ("GET", "/v2/models/nope/ready"),
                         ("POST", "/v2/models/nope/infer")]:
        error = v2_error(invoke(handler, kind, method, path, payload=inference if method == "POST" else None),
                         404, "MODEL_NOT_FOUND")
        assert "'nope'" in error["error"]


@pytest.mark.parametrize("path", ["/v2/models/iris_model/infer", "/v2/models/iris_model/versions/1.0.0/infer"])
def test_v2_infer_with_one_fp64_tensor_per_field(handler: Handler, kind: Kind, path: str) -> None:
    answer = ok(invoke(handler, kind, "POST", path, payload={"id": "req-1", "inputs": iris_tensors(SETOSA)}))
    assert answer.pop("parameters") in ({"cached": False}, {"cached": True})  # host.yaml caches iris
    assert answer == {
        "id": "req-1",
        "model_name": "iris_model",
        "model_version": "1.0.0",
        "outputs": [{"name": "species", "datatype": "BYTES", "shape": [1], "data": ["Iris setosa"]}],
    }


def test_v2_infer_with_invalid_input_is_400_naming_the_field(handler: Handler, kind: Kind) -> None:
    tensors = iris_tensors({**SETOSA, "sepal_length": 99})
    error = v2_error(invoke(handler, kind, "POST", "/v2/models/iris_model/infer", payload={"inputs": tensors}),
                     400, "INVALID_INPUT")
    assert "sepal_length" in error["error"]
    assert [detail["field"] for detail in error["details"]] == ["sepal_length"]


def test_v2_binary_tensors_travel_base64_encoded(handler: Handler, kind: Kind) -> None:
    header = json.dumps({
        "inputs": [{"name": name, "datatype": "FP64", "shape": [1], "parameters": {"binary_data_size": 8}}
                   for name in SETOSA],
        "outputs": [{"name": "species", "parameters": {"binary_data": True}}],
    }).encode()
    body = header + b"".join(struct.pack("<d", value) for value in SETOSA.values())
    response = invoke(handler, kind, "POST", "/v2/models/iris_model/infer", body=body, base64_body=True,
                      headers={"Content-Type": "application/octet-stream",
                               "Inference-Header-Content-Length": str(len(header))})
    assert response.status == 200, response.body
    assert response.content_type == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    answer = json.loads(response.body[:length])
    assert answer["outputs"] == [{"name": "species", "datatype": "BYTES", "shape": [1],
                                  "parameters": {"binary_data_size": 15}}]
    assert response.body[length:] == struct.pack("<I", 11) + b"Iris setosa"  # BYTES: length-prefixed


@pytest.mark.parametrize(("path", "expected"), [
    ("/api/health", {"health_status": "HEALTHY"}),
    ("/api/health/ready", {"readiness_status": "ACCEPTING_TRAFFIC"}),
    ("/api/health/startup", {"startup_status": "STARTED"}),
    ("/v2/health/live", {"live": True}),
    ("/v2/health/ready", {"ready": True}),
    ("/v2/models/iris_model/ready", {"name": "iris_model", "ready": True}),
])
def test_health_and_readiness(handler: Handler, kind: Kind, path: str, expected: dict[str, Any]) -> None:
    assert ok(invoke(handler, kind, "GET", path)) == expected


def test_a_failing_model_is_500_and_an_oversized_body_413(toy_handler: Handler, kind: Kind) -> None:
    path = "/api/models/echo/prediction"
    assert ok(invoke(toy_handler, kind, "POST", path, payload={"x": 1.5})) == {"y": 3.0, "text": ""}
    message = rest_error(invoke(toy_handler, kind, "POST", path, payload={"x": 1, "fail": True}), 500, "MODEL_ERROR")
    assert "asked to fail" in message
    # The limit comes from the config's transports.http.max_request_bytes.
    message = rest_error(invoke(toy_handler, kind, "POST", path, payload={"x": 1, "text": "a" * 3000}),
                         413, "PAYLOAD_TOO_LARGE")
    assert "2048" in message
    inference = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [400], "data": [1.0] * 400}]}
    v2_error(invoke(toy_handler, kind, "POST", "/v2/models/echo/infer", payload=inference), 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/api/models/iris_model/prediction", "POST"),
    ("GET", "/v2/models/iris_model/infer", "POST"),
    ("POST", "/api/models", "GET, HEAD"),
    ("OPTIONS", "/v2/models/iris_model", "GET, HEAD"),
])
def test_a_method_the_route_does_not_take_is_405_json_with_allow(handler: Handler, kind: Kind, method: str,
                                                                   path: str, allow: str) -> None:
    response = invoke(handler, kind, method, path)
    if is_v2(path):
        v2_error(response, 405, "METHOD_NOT_ALLOWED")
    else:
        rest_error(response, 405, "METHOD_NOT_ALLOWED")
    assert set(response.headers["allow"].split(", ")) == set(allow.split(", "))


@pytest.mark.parametrize("path", ["/api/nope", "/api/models/iris_model/nope", "/v2/nope", "/nope"])
def test_an_unknown_path_is_404_json(handler: Handler, kind: Kind, path: str) -> None:
    response = invoke(handler, kind, "GET", path)
    message = v2_error(response, 404, "NOT_FOUND")["error"] if is_v2(path) else rest_error(response, 404, "NOT_FOUND")
    assert path in message


# --- warm starts ----------------------------------------------------------------------------------------------


def test_a_warm_start_answers_like_the_first_invocation(handler: Handler, kind: Kind) -> None:
    path = "/api/models/iris_model/prediction"
    first = invoke(handler, kind, "POST", path, payload=SETOSA)
    rest_error(invoke(handler, kind, "POST", path, payload={"sepal_length": 1}), 400, "INVALID_INPUT")
    second = invoke(handler, kind, "POST", path, payload=SETOSA)
    assert ok(first) == ok(second) == {"species": "Iris setosa"}


def test_fifty_invocations_in_a_row_all_succeed(handler: Handler, lambda_loop: asyncio.AbstractEventLoop) -> None:
    inference = {"inputs": iris_tensors(VIRGINICA)}
    for n in range(50):
        kind = KINDS[n % len(KINDS)]
        if n % 2:
            answer = ok(invoke(handler, kind, "POST", "/v2/models/iris_model/infer", payload=inference))
            assert answer["outputs"][0]["data"] == ["Iris virginica"], n
        else:
            assert ok(invoke(handler, kind, "POST", "/api/models/iris_model/prediction", payload=SETOSA)) == \
                {"species": "Iris setosa"}, n
    # Lambda freezes the process between invocations: nothing may be left running on the loop.
    assert not [task for task in asyncio.all_tasks(lambda_loop) if not task.done()]


# --- a function whose models cannot load ----------------------------------------------------------------------

EVERY_ROUTE = [
    ("GET", "/api/health"),
    ("GET", "/api/health/ready"),
    ("GET", "/api/models"),
    ("GET", "/api/models/echo/metadata"),
    ("POST", "/api/models/echo/prediction"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/echo"),
    ("GET", "/v2/models/echo/ready"),
    ("POST", "/v2/models/echo/infer"),
    ("POST", "/v2/models/echo/versions/1.0.0/infer"),
    ("GET", "/"),
    ("GET", "/v2"),
    ("GET", "/api/models/echo/prediction"),  # the wrong method: still not ready
    ("GET", "/api/nope"),
    ("GET", "/v2/nope"),
    ("GET", "/nope"),
    ("GET", "/v2x/models"),  # not under /v2/: the author's format
]


def refusals(handler: Handler, kind: Kind) -> list[str]:
    """Invoke every route; check each answers 503 NOT_READY in its own format; return the reasons."""
    reasons = []
    for method, path in EVERY_ROUTE:
        payload = ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}]}
                   if is_v2(path) else {"x": 1}) if method == "POST" else None
        response = invoke(handler, kind, method, path, payload=payload)
        if is_v2(path):
            reasons.append(v2_error(response, 503, "NOT_READY")["error"])
        else:
            reasons.append(rest_error(response, 503, "NOT_READY"))
    return reasons


def test_a_model_that_fails_to_load_makes_every_route_503(failing_handler: Handler, kind: Kind) -> None:
    for reason in refusals(failing_handler, kind):
        assert reason.startswith("hostd could not load its models: ")
        assert f"{TOY}:FailsToLoad failed to load: {LOAD_FAILURE}" in reason


def test_a_missing_config_makes_every_route_503(create_handler: Callable[[Path | str], Handler], tmp_path: Path,
                                                kind: Kind) -> None:
    missing = tmp_path / "host.yaml"
    handler = create_handler(missing)
    for reason in refusals(handler, kind):
        assert f"{missing}: cannot read config: No such file or directory" in reason


def test_a_model_package_that_raises_on_import_makes_every_route_503(
        create_handler: Callable[[Path | str], Handler], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A model package that cannot load because its import fails with something other than ImportError
    # (a missing GPU driver, a version check): the module's docstring promises 503s, not a failed init.
    (tmp_path / "broken_lambda_model.py").write_text('raise RuntimeError("CUDA driver version is insufficient")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "host.yaml"
    config.write_text("models:\n  - class_path: broken_lambda_model:Model\n")
    handler = create_handler(config)
    for reason in refusals(handler, "url"):
        assert "CUDA driver version is insufficient" in reason


def test_an_invalid_http_section_makes_every_route_503(create_handler: Callable[[Path | str], Handler],
                                                       tmp_path: Path) -> None:
    config = tmp_path / "host.yaml"
    config.write_text(f"models:\n  - class_path: {TOY}:EchoModel\ntransports:\n  http: {{max_request_bytes: 1mb}}\n")
    handler = create_handler(config)
    for reason in refusals(handler, "url"):
        assert "max_request_bytes" in reason


# --- the module as Lambda imports it --------------------------------------------------------------------------

COLD_START = textwrap.dedent("""\
    import json, sys
    events = json.load(sys.stdin)
    from hostd_lambda import handler as module
    replies = [module.handler(event, None) for event in events]
    print(json.dumps({"config": str(module.default_config()), "replies": replies}))
""")


def echo_config(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "host.yaml"
    path.write_text(f"models:\n  - class_path: {TOY}:EchoModel\n    configuration: {{name: {name}}}\n")
    return path


@pytest.mark.parametrize("source", ["HOSTD_CONFIG", "LAMBDA_TASK_ROOT"])
def test_a_cold_start_serves_the_config_the_environment_names(tmp_path: Path, source: str) -> None:
    task_root = echo_config(tmp_path / "task", "from_lambda_task_root").parent
    env = {name: value for name, value in os.environ.items() if not name.startswith("HOSTD_")}
    env["LAMBDA_TASK_ROOT"] = str(task_root)
    expected = task_root / "host.yaml"
    if source == "HOSTD_CONFIG":
        expected = echo_config(tmp_path / "elsewhere", "from_hostd_config")
        env["HOSTD_CONFIG"] = str(expected)
    events = [event("url", "GET", "/api/models"),
              event("rest", "POST", f"/api/models/from_{source.lower()}/prediction", body=json.dumps({"x": 2})),
              event("http", "GET", "/v2/health/ready")]
    # -W error: a Python warning at import (e.g. asyncio's about a missing event loop) fails the init.
    result = subprocess.run([sys.executable, "-W", "error", "-c", COLD_START], cwd=ROOT, env=env,
                            input=json.dumps(events), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["config"] == str(expected)
    listing, prediction, ready = (reply(response) for response in output["replies"])
    assert [model["qualified_name"] for model in ok(listing)["models"]] == [f"from_{source.lower()}"]
    assert ok(prediction) == {"y": 4.0, "text": ""}
    assert ok(ready) == {"ready": True}


def test_a_base_path_left_on_the_path_by_api_gateway_is_stripped(
        create_handler: Callable[..., Handler], kind: Kind) -> None:
    staged = create_handler(HOST_YAML, base_path="/prod")  # an HTTP API stage, a custom domain mapping
    listed = invoke(staged, kind, "GET", "/prod/api/models")
    assert listed.status == 200 and len(listed.json()["models"]) == 3
    predicted = invoke(staged, kind, "POST", "/prod/api/models/iris_model/prediction", payload=VIRGINICA)
    assert predicted.status == 200 and predicted.json() == {"species": "Iris virginica"}


def test_a_collector_that_never_answers_costs_an_invocation_at_most_its_flush(
        create_handler: Callable[[Path | str], Handler], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lambda freezes the container between invocations, so each sends its spans before it returns; a
    collector that takes the connection and never answers held each one for the exporter's 10 s (and
    retries), past Lambda's own 3 s default timeout."""
    import socket
    import threading
    import time

    from hostd import tracing
    # The exporter's timeout past Lambda's 3 s (its default is 10 s), short enough for the flushes left
    # behind to end with the test.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "4")
    with socket.socket() as silent:  # the kernel takes the connection; nobody ever reads it
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        path = tmp_path / "host.yaml"
        path.write_text(f"models:\n  - class_path: {TOY}:EchoModel\ntracing: {{exporter: otlp, endpoint: "
                        f"'http://127.0.0.1:{silent.getsockname()[1]}/v1/traces'}}\n")
        traced = create_handler(path)
        try:
            for _ in range(2):
                started = time.monotonic()
                answered = invoke(traced, "http", "POST", "/api/models/echo/prediction", payload={"x": 1, "text": "a"},
                                  headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
                assert ok(answered)["y"] == 2.0
                assert time.monotonic() - started < 3, "within Lambda's default timeout"
        finally:
            tracing.disable()
    for flushing in [thread for thread in threading.enumerate() if thread.name == "hostd-tracing-flush"]:
        flushing.join(10)  # the socket is closed: they fail at once, and give up at the exporter's timeout
    traced.provider.shutdown()  # type: ignore[attr-defined]
