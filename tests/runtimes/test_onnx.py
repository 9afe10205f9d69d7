"""hostd.runtimes.onnx: ONNX graphs served with onnxruntime. Graphs come from scikit-learn estimators
trained here (skl2onnx) or are built with onnx.helper; hostd must answer what onnxruntime and the
estimator answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from hostd.errors import ModelLoadError
from hostd.loading import load_model
from hostd.model import check_model
from hostd.runtimes.onnx import OnnxModel
from hostd.settings import ModelSettings

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def answers(model: Any, matrix: np.ndarray) -> list[dict[str, Any]]:
    fields = list(model.input_schema.model_fields)
    inputs = [model.input_schema.model_validate(dict(zip(fields, row.tolist(), strict=True))) for row in matrix]
    return [output.model_dump() for output in model.predict_batch(inputs)]


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray, LogisticRegression]:
    data = load_iris()
    labels = np.array(data.target_names)[data.target]
    return data.data, labels, LogisticRegression(max_iter=500).fit(data.data, labels)


def save(graph: Any, path: Path) -> Path:
    path.write_bytes(graph.SerializeToString())
    return path


@pytest.mark.parametrize("zipmap", [True, False], ids=["probabilities-as-maps", "probabilities-as-a-tensor"])
def test_a_classifier_answers_the_estimators_labels_and_probabilities(
        tmp_path: Path, iris: tuple[np.ndarray, np.ndarray, LogisticRegression], zipmap: bool) -> None:
    x, _, estimator = iris
    path = save(to_onnx(estimator, x[:1].astype(np.float32), options={"zipmap": zipmap}), tmp_path / "flowers.onnx")
    classes = None if zipmap else estimator.classes_.tolist()  # a tensor's columns are not named in the graph
    model = OnnxModel(uri=str(path), features=FEATURES, probabilities=True, classes=classes)
    check_model(model)
    assert (model.qualified_name, list(model.input_schema.model_fields)) == ("flowers", FEATURES)
    got = answers(model, x)
    assert [a["prediction"] for a in got] == estimator.predict(x).tolist()
    assert np.allclose([list(a["probabilities"].values()) for a in got], estimator.predict_proba(x), atol=1e-5)
    assert list(got[0]["probabilities"]) == ["setosa", "versicolor", "virginica"]


def test_a_regressor_answers_numbers(tmp_path: Path) -> None:
    data = load_diabetes()
    estimator = LinearRegression().fit(data.data, data.target)
    path = save(to_onnx(estimator, data.data[:1].astype(np.float32)), tmp_path / "progression.onnx")
    model = OnnxModel(uri=str(path))
    assert list(model.input_schema.model_fields) == [f"f{i}" for i in range(10)]
    got = [a["prediction"] for a in answers(model, data.data[:25])]
    assert np.allclose(got, estimator.predict(data.data[:25]), rtol=1e-4)


def test_a_graph_with_one_input_per_feature_takes_them_by_name(tmp_path: Path) -> None:
    # total = 2 * width + height, from two [rows, 1] inputs
    graph = helper.make_graph(
        [helper.make_node("Concat", ["width", "height"], ["both"], axis=1),
         helper.make_node("MatMul", ["both", "weights"], ["total"])],
        "sizes",
        [helper.make_tensor_value_info("width", TensorProto.FLOAT, [None, 1]),
         helper.make_tensor_value_info("height", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("weights", TensorProto.FLOAT, [2, 1], [2.0, 1.0])])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "sizes.onnx")
    onnx.checker.check_model(onnx.load(path))
    model = OnnxModel(uri=str(path))
    assert list(model.input_schema.model_fields) == ["width", "height"]
    assert answers(model, np.array([[1.0, 3.0], [2.5, 0.0]])) == [{"prediction": 5.0}, {"prediction": 5.0}]


@pytest.mark.parametrize(("configuration", "words"), [
    ({"features": ["a", "b"]}, "lists 2 names, but the model takes 4"),
    ({"probabilities": True, "file": "regressor"}, "not a classifier with a probability output"),
    ({"probabilities": True, "zipmap": False}, "list the classes in order"),
    ({"file": "garbage"}, "is not an ONNX model onnxruntime can load"),
], ids=["feature-count", "probabilities-for-a-regressor", "unnamed-columns", "not-onnx"])
def test_a_mismatched_configuration_is_an_error_naming_the_entry(
        tmp_path: Path, iris: tuple[np.ndarray, np.ndarray, LogisticRegression], configuration: dict[str, Any],
        words: str) -> None:
    x, _, estimator = iris
    configuration = dict(configuration)
    kind, zipmap = configuration.pop("file", "classifier"), configuration.pop("zipmap", True)
    path = tmp_path / "model.onnx"
    if kind == "garbage":
        path.write_bytes(b"not a graph")
    elif kind == "regressor":
        save(to_onnx(LinearRegression().fit(x, x[:, 0]), x[:1].astype(np.float32)), path)
    else:
        save(to_onnx(estimator, x[:1].astype(np.float32), options={"zipmap": zipmap}), path)
    settings = ModelSettings.model_validate({"class_path": "hostd.runtimes.onnx:OnnxModel",
                                             "configuration": {"uri": str(path), **configuration}})
    with pytest.raises(ModelLoadError) as raised:
        load_model(settings, lambda *keys: "host.yaml:9")
    assert "host.yaml:9" in str(raised.value) and words in str(raised.value), str(raised.value)
