"""hostd.serve: the in-memory config `hostd serve` runs for one model file or class."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostd import runtimes, serve
from hostd.errors import ConfigError
from hostd.settings import HostSettings


@pytest.mark.parametrize(("file", "runtime"), [
    ("iris.skops", runtimes.SKLEARN), ("iris.joblib", runtimes.SKLEARN), ("booster.json", runtimes.XGBOOST),
    ("booster.ubj", runtimes.XGBOOST), ("model.txt", runtimes.LIGHTGBM), ("graph.onnx", runtimes.ONNX)])
def test_a_model_file_is_served_by_the_runtime_its_extension_names(tmp_path: Path, file: str, runtime: str) -> None:
    path = tmp_path / file
    path.write_bytes(b"")
    made = serve.config(str(path), name="flowers", trust=True)
    assert made["models"] == [{"class_path": runtime, "configuration": {"uri": str(path.resolve()), "name": "flowers",
                                                                         "trust": True}}]
    assert made["transports"] == {"http": {"host": "127.0.0.1", "port": 8080},
                                  "grpc": {"host": "127.0.0.1", "port": 8081}}
    HostSettings.model_validate(made)  # a config hostd run would take


def test_a_model_class_and_every_transport_on_consecutive_ports() -> None:
    made = serve.config("iris_model.model:IrisModel", port=9000, host="0.0.0.0", transports=["zmq", "ws", "http"])
    assert made["models"] == [{"class_path": "iris_model.model:IrisModel"}]
    assert made["transports"] == {"http": {"host": "0.0.0.0", "port": 9000}, "ws": {"host": "0.0.0.0", "port": 9001},
                                  "zmq": {"bind": "tcp://0.0.0.0:9002", "zerorpc_bind": None}}


@pytest.mark.parametrize(("target", "transports", "words"), [
    ("model.bin", ["http"], "neither a model file hostd knows"),
    ("iris_model.model:IrisModel", ["http", "kafka"], "kafka cannot be served without a config"),
    ("iris_model.model:IrisModel", ["grpc"], "must include http"),
])
def test_what_cannot_be_served_says_why(target: str, transports: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        serve.config(target, transports=transports)


def test_an_mlflow_directory_is_served_by_the_mlflow_runtime(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    made = serve.config(str(tmp_path), trust=True)
    assert made["models"] == [{"class_path": runtimes.MLFLOW, "configuration": {"uri": str(tmp_path.resolve()),
                                                                              "trust": True}}]
