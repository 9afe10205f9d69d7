"""Malformed OIP v2 inputs a real hostd got in issue 13's adversarial run, over a real socket: each is a 400
saying what is wrong (plugins/hostd_http/tensors.py, hostd/tensors.py, the model packages' schemas)."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import HostdProcess
from tests.support.e2e import IRIS_FIELDS, REAL_MODELS, Start, echo, iris_payload

pytestmark = pytest.mark.e2e


def infer(server: HostdProcess, model: str, *tensors: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json={"inputs": list(tensors)}, timeout=10)


def tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def invalid(response: httpx.Response) -> str:
    """The error message of a v2 400 INVALID_INPUT."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "INVALID_INPUT"
    return str(body["error"])


def test_malformed_v2_inputs_get_a_400_saying_what_is_wrong(start_hostd: Start) -> None:
    # One server for every case: starting one is the slow part.
    server = start_hostd({"models": [{"class_path": "iris_model.model:IrisModel"}, echo(workers=1)]})
    iris = [tensor(name, "FP64", [1], [value]) for name, value in iris_payload(0).items()]

    # An input given twice: both were accepted, the second one used.
    twice = [*iris, tensor("sepal_length", "FP64", [1], [7.9])]
    assert invalid(infer(server, "iris_model", *twice)) == "input tensor 'sepal_length' is given twice"

    # BOOL: true and false were taken as 1.0 and 0.0, refused for being below the sepal length's minimum.
    message = invalid(infer(server, "iris_model", tensor("input", "BOOL", [1, 4], [True, False, True, True])))
    assert "'input' was sent as BOOL" in message and "(booleans are not numbers)" in message
    assert "greater than" not in message
    message = invalid(infer(server, "echo", tensor("x", "BOOL", [1], [True])))
    assert message == "input 'x' was sent as BOOL; the model expects FP64 (booleans are not numbers)"
    features = triton.InferInput("input__0", [1, 4], "BOOL")  # in binary, as tritonclient sends it
    features.set_data_from_numpy(np.array([[True, False, True, True]]), binary_data=True)
    with triton.InferenceServerClient(url=f"127.0.0.1:{server.port}") as client, \
            pytest.raises(InferenceServerException) as info:
        client.infer("iris_model", [features])
    assert "booleans are not numbers" in str(info.value) and "greater than" not in str(info.value)

    # BYTES [1, 4]: reported as an "unknown input tensor", although the one [rows, 4] tensor may have any name.
    message = invalid(infer(server, "iris_model", tensor("input", "BYTES", [1, 4], ["5.1", "3.5", "1.4", "0.2"])))
    assert "unknown" not in message
    assert message.startswith(f"input 'input' was sent as BYTES; a single input tensor must be numeric, "
                              f"[rows, 4] with columns {', '.join(IRIS_FIELDS)}")
    # Under a field's name, with a shape the field does not take: the shape is what is wrong.
    message = invalid(infer(server, "echo", tensor("text", "BYTES", [1, 4], ["a", "b", "c", "d"])))
    assert message == "input 'text' has shape [1, 4]; the model expects [rows] (or [rows, 1])"

    assert infer(server, "iris_model", *iris).status_code == 200  # and the daemon serves on


def test_a_boolean_is_no_number_over_the_rest_api(start_hostd: Start) -> None:
    # pydantic alone took false as the pixel 0, true as 1.0 (a valid sex code): 200 with a prediction.
    server = start_hostd({"models": REAL_MODELS})
    patient = {"age": 59.0, "sex": True, "bmi": 32.1, "bp": 101.0, "s1": 157.0, "s2": 93.2, "s3": 38.0, "s4": 4.0,
               "s5": 4.8598, "s6": 87.0}
    for model, body, says in [
        ("digits_model", {"image": [[False] + [0] * 7] + [[0] * 8] * 7}, "image.0.0: must be a whole number"),
        ("iris_model", iris_payload(0) | {"petal_width": True}, "petal_width: must be a number, not a boolean"),
        ("diabetes_model", patient, "sex: must be a number, not a boolean"),
    ]:
        response = httpx.post(f"{server.url}/api/models/{model}/prediction", json=body, timeout=10)
        messages = [says.replace(": ", ": Value error, ")]  # pydantic's prefix for a validator's ValueError
        assert (response.status_code, response.json()["messages"]) == (400, messages), model
