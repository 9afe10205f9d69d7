"""hostd.runtimes.mlflow: an MLflow model directory served through pyfunc. Models are saved here with
mlflow.sklearn.save_model (no tracking server); hostd must answer what the estimator answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.sklearn
import numpy as np
import pandas
import pytest
from mlflow.models import infer_signature
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from hostd.errors import ModelLoadError
from hostd.loading import load_model
from hostd.model import check_model
from hostd.runtimes.mlflow import MlflowModel
from hostd.settings import ModelSettings

# MLflow warns about its own internals while it saves a model (type hints it infers as Any).
pytestmark = pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")


@pytest.fixture(scope="module")
def flowers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LogisticRegression, pandas.DataFrame]:
    data = load_iris(as_frame=True)
    frame = data.data  # columns "sepal length (cm)" ...: not identifiers, as real data often has
    estimator = LogisticRegression(max_iter=500).fit(frame, np.array(data.target_names)[data.target])
    path = tmp_path_factory.mktemp("mlflow") / "flowers"
    mlflow.sklearn.save_model(estimator, str(path), signature=infer_signature(frame, estimator.predict(frame)))
    return path, estimator, frame


def predict(model: MlflowModel, frame: pandas.DataFrame) -> list[Any]:
    rows = [model.input_schema.model_validate(row) for row in frame.to_dict("records")]
    return [output.model_dump()["prediction"] for output in model.predict_batch(rows)]


def test_a_classifier_answers_the_estimators_labels(flowers: tuple[Path, LogisticRegression, pandas.DataFrame]
                                                    ) -> None:
    path, estimator, frame = flowers
    model = MlflowModel(uri=str(path), trust=True)
    check_model(model)
    assert model.qualified_name == "flowers"
    assert list(model.input_schema.model_fields) == ["sepal_length_cm", "sepal_width_cm", "petal_length_cm",
                                                     "petal_width_cm"]
    assert model.output_schema.model_fields["prediction"].annotation is str
    assert predict(model, frame) == estimator.predict(frame).tolist()


def test_a_regressor_answers_numbers(tmp_path: Path) -> None:
    data = load_diabetes(as_frame=True)
    estimator = LinearRegression().fit(data.data, data.target)
    path = tmp_path / "progression"
    mlflow.sklearn.save_model(estimator, str(path), signature=infer_signature(data.data, estimator.predict(data.data)))
    got = predict(MlflowModel(uri=str(path), trust=True), data.data.iloc[:20])
    assert np.allclose(got, estimator.predict(data.data.iloc[:20]))


@pytest.mark.parametrize(("case", "words"), [
    ("untrusted", "only with trust: true"),
    ("not-a-model", "is not an MLflow model directory"),
    ("no-signature", "has no signature naming its input columns"),
])
def test_what_cannot_be_served_is_an_error_naming_the_entry(
        tmp_path: Path, flowers: tuple[Path, LogisticRegression, pandas.DataFrame], case: str, words: str) -> None:
    path, estimator, _ = flowers
    configuration: dict[str, Any] = {"uri": str(path), "trust": True}
    if case == "untrusted":
        configuration["trust"] = False
    elif case == "not-a-model":
        configuration["uri"] = str(tmp_path)
    else:
        unsigned = tmp_path / "unsigned"
        mlflow.sklearn.save_model(estimator, str(unsigned))
        configuration["uri"] = str(unsigned)
    settings = ModelSettings.model_validate({"class_path": "hostd.runtimes.mlflow:MlflowModel",
                                             "configuration": configuration})
    with pytest.raises(ModelLoadError) as raised:
        load_model(settings, lambda *keys: "host.yaml:4")
    assert "host.yaml:4" in str(raised.value) and words in str(raised.value), str(raised.value)
