"""hostd.runtimes.sklearn: a scikit-learn file served with no code. Estimators are trained here, on
scikit-learn's bundled datasets, and hostd's predictions must equal the estimator's own."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.svm import LinearSVC

from hostd.configfile import parse_settings
from hostd.errors import ConfigError, ModelLoadError
from hostd.loading import load_model
from hostd.model import check_model, is_deterministic
from hostd.runtimes.artifact import ArtifactError, file_sha256
from hostd.runtimes.sklearn import SklearnModel
from hostd.settings import ModelSettings

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    data = load_iris()
    return data.data, np.array(data.target_names)[data.target]  # string labels, as users have them


@pytest.fixture(scope="module")
def classifier(iris: tuple[np.ndarray, np.ndarray]) -> LogisticRegression:
    return LogisticRegression(max_iter=500).fit(*iris)


@pytest.fixture(scope="module")
def skops_file(classifier: LogisticRegression, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("artifacts") / "iris.skops"
    sio.dump(classifier, path)
    return path


def rows(matrix: np.ndarray, names: list[str]) -> list[dict[str, float]]:
    return [dict(zip(names, map(float, row), strict=True)) for row in matrix]


def predict(model: SklearnModel, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    inputs = [model.input_schema.model_validate(payload) for payload in payloads]
    return [output.model_dump() for output in model.predict_batch(inputs)]


def test_a_skops_classifier_predicts_what_the_estimator_predicts(
        skops_file: Path, classifier: LogisticRegression, iris: tuple[np.ndarray, np.ndarray]) -> None:
    model = SklearnModel(uri=str(skops_file), name="iris", features=IRIS_FEATURES, probabilities=True)
    check_model(model)
    assert (model.qualified_name, model.version, model.deterministic) == ("iris", "1.0.0", True)
    assert list(model.input_schema.model_fields) == IRIS_FEATURES
    answers = predict(model, rows(iris[0], IRIS_FEATURES))
    assert [a["prediction"] for a in answers] == classifier.predict(iris[0]).tolist()
    expected = classifier.predict_proba(iris[0])
    for answer, probabilities in zip(answers, expected, strict=True):
        assert list(answer["probabilities"]) == ["setosa", "versicolor", "virginica"]
        assert list(answer["probabilities"].values()) == pytest.approx(probabilities.tolist())


def test_the_input_schema_validates_like_a_hand_written_one(skops_file: Path) -> None:
    model = SklearnModel(uri=str(skops_file), features=IRIS_FEATURES)
    assert model.qualified_name == "iris"  # the file's stem
    with pytest.raises(ValueError, match="sepal_width"):
        model.input_schema.model_validate({"sepal_length": 5.1, "petal_length": 1.4, "petal_width": 0.2})
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        model.input_schema.model_validate({**dict.fromkeys(IRIS_FEATURES, 1.0), "colour": 1.0})


def test_without_feature_names_the_fields_are_f0_to_fn(skops_file: Path) -> None:
    model = SklearnModel(uri=str(skops_file))
    assert list(model.input_schema.model_fields) == ["f0", "f1", "f2", "f3"]


def test_feature_names_from_the_estimator_become_fields_and_aliases(tmp_path: Path,
                                                                    iris: tuple[np.ndarray, np.ndarray]) -> None:
    estimator = LogisticRegression(max_iter=500).fit(*iris)
    estimator.feature_names_in_ = np.array(load_iris().feature_names, dtype=object)  # as a DataFrame fit sets it
    path = tmp_path / "named.skops"
    sio.dump(estimator, path)
    model = SklearnModel(uri=str(path))
    assert list(model.input_schema.model_fields) == ["sepal_length_cm", "sepal_width_cm", "petal_length_cm",
                                                     "petal_width_cm"]
    by_alias = dict(zip(load_iris().feature_names, iris[0][0].tolist(), strict=True))
    by_name = dict(zip(model.input_schema.model_fields, iris[0][0].tolist(), strict=True))
    assert predict(model, [by_alias]) == predict(model, [by_name]) == [{"prediction": "setosa"}]


def test_a_regressor_predicts_numbers(tmp_path: Path) -> None:
    data = load_diabetes()
    estimator = LinearRegression().fit(data.data, data.target)
    path = tmp_path / "diabetes.skops"
    sio.dump(estimator, path)
    model = SklearnModel(uri=str(path), name="diabetes", features=list(data.feature_names))
    answers = predict(model, rows(data.data[:20], list(data.feature_names)))
    assert [a["prediction"] for a in answers] == pytest.approx(estimator.predict(data.data[:20]).tolist())


def test_joblib_and_pickle_load_only_with_trust(tmp_path: Path, classifier: LogisticRegression,
                                                iris: tuple[np.ndarray, np.ndarray]) -> None:
    dumped = tmp_path / "iris.joblib"
    joblib.dump(classifier, dumped)
    pickled = tmp_path / "iris.pkl"
    pickled.write_bytes(pickle.dumps(classifier))
    for path in (dumped, pickled):
        with pytest.raises(ArtifactError, match=r"runs any code it holds.*trust: true"):
            SklearnModel(uri=str(path))
        model = SklearnModel(uri=str(path), trust=True, features=IRIS_FEATURES)
        assert [a["prediction"] for a in predict(model, rows(iris[0][:5], IRIS_FEATURES))] == ["setosa"] * 5


@pytest.mark.parametrize(("file", "configuration", "words"), [
    ("", {}, "does not exist: check the path"),
    ("not-a-zip.skops", {}, "is not a skops file"),
    ("graph.onnx", {}, "not a scikit-learn file hostd knows"),
    ("logistic.skops", {"sha256": "0" * 64}, "not the configured"),
    ("logistic.skops", {"features": ["a", "b"]}, "lists 2 names, but the model takes 4"),
    ("svc.skops", {"probabilities": True}, "has no predict_proba"),
], ids=["missing", "not-skops", "unknown-format", "checksum", "feature-count", "no-probabilities"])
def test_a_bad_artifact_is_a_config_error_naming_the_entry_and_what_to_do(
        tmp_path: Path, iris: tuple[np.ndarray, np.ndarray], file: str, configuration: dict[str, Any],
        words: str) -> None:
    path = tmp_path / (file or "missing.skops")
    if file == "logistic.skops":
        sio.dump(LogisticRegression(max_iter=500).fit(*iris), path)
    elif file == "svc.skops":
        sio.dump(LinearSVC().fit(*iris), path)
    elif file:
        path.write_bytes(b"not what its name says")
    settings = ModelSettings.model_validate({"class_path": "hostd.runtimes.sklearn:SklearnModel",
                                             "configuration": {"uri": str(path), **configuration}})
    with pytest.raises((ConfigError, ModelLoadError)) as raised:
        load_model(settings, lambda *keys: "host.yaml:3")
    message = str(raised.value)
    assert "host.yaml:3" in message and words in message, message


def test_the_checksum_that_matches_loads(skops_file: Path) -> None:
    assert SklearnModel(uri=str(skops_file), sha256=file_sha256(skops_file).upper()).qualified_name == "iris"


def test_a_uri_alone_names_the_runtime_that_serves_it(skops_file: Path, tmp_path: Path) -> None:
    settings = parse_settings(f"models:\n  - uri: {skops_file}\n    configuration: {{name: flowers}}\n    "
                              "timeout_ms: 500\n", "host.yaml")
    (entry,) = settings.models
    assert (entry.class_path, entry.configuration, entry.timeout_ms) == (
        "hostd.runtimes.sklearn:SklearnModel", {"uri": str(skops_file), "name": "flowers"}, 500)
    assert load_model(entry).qualified_name == "flowers"
    for text, words in [(f"models:\n  - uri: {tmp_path / 'model.bin'}\n", "no built-in runtime serves"),
                        (f"models:\n  - uri: {skops_file}\n    class_path: a.b:C\n", "not both")]:
        with pytest.raises(ConfigError, match=words) as raised:
            parse_settings(text, "host.yaml")
        assert "host.yaml:2" in str(raised.value), str(raised.value)


def test_the_typed_grpc_service_and_openapi_name_each_class_probability(skops_file: Path) -> None:
    from hostd_grpc.typed import describe, render

    from hostd.registry import ServedModel

    model = SklearnModel(uri=str(skops_file), features=IRIS_FEATURES, probabilities=True)
    proto = render(describe(ServedModel(model, ModelSettings(class_path="hostd.runtimes.sklearn:SklearnModel"))))
    assert "service Iris" in proto and "setosa" in proto and "virginica" in proto
    schema = model.output_schema.model_json_schema(by_alias=True)
    (nested,) = schema["$defs"].values()
    assert list(nested["properties"]) == ["setosa", "versicolor", "virginica"]


def test_deterministic_unless_the_entry_says_otherwise(skops_file: Path) -> None:
    assert is_deterministic(SklearnModel(uri=str(skops_file)))
    assert not is_deterministic(SklearnModel(uri=str(skops_file), deterministic=False))
