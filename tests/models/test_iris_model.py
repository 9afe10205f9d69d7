"""The iris model package: parameters, predictions, schemas, packaging."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from iris_model.model import FEATURES, IrisModel
from iris_model.schemas import IrisModelInput, IrisModelOutput, Species
from pydantic import ValidationError
from sklearn.datasets import load_iris

from hostd import MLModel
from hostd.model import check_model

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
VALID = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture(scope="module")
def model() -> IrisModel:
    return IrisModel()


@pytest.fixture(scope="module")
def dataset() -> tuple[list[IrisModelInput], list[Species]]:
    iris = load_iris()
    inputs = [IrisModelInput(**dict(zip(FEATURES, row, strict=True))) for row in iris.data]
    species = [Species(f"Iris {iris.target_names[index]}") for index in iris.target]
    return inputs, species


def test_fits_the_model_contract(model: IrisModel) -> None:
    check_model(model)
    assert isinstance(model, MLModel)
    assert model.qualified_name == "iris_model"
    assert model.display_name == "Iris Model"
    assert model.description
    assert model.deterministic is True
    assert model.input_schema is IrisModelInput
    assert model.output_schema is IrisModelOutput


def test_version_is_semver_and_matches_the_distribution(model: IrisModel) -> None:
    assert SEMVER.match(model.version)
    assert model.version == metadata.version("iris_model")


def test_first_row_is_setosa(model: IrisModel) -> None:
    prediction = model.predict(IrisModelInput(**VALID))
    assert prediction == IrisModelOutput(species=Species.setosa)
    assert prediction.model_dump(mode="json") == {"species": "Iris setosa"}


def test_accuracy_on_the_dataset(
    model: IrisModel, dataset: tuple[list[IrisModelInput], list[Species]]
) -> None:
    inputs, species = dataset
    predicted = [output.species for output in model.predict_batch(inputs)]
    assert np.mean([p == s for p, s in zip(predicted, species, strict=True)]) >= 0.95


def test_predict_batch_equals_predict(
    model: IrisModel, dataset: tuple[list[IrisModelInput], list[Species]]
) -> None:
    inputs, _ = dataset
    assert model.predict_batch(inputs) == [model.predict(item) for item in inputs]


def test_predict_batch_of_nothing(model: IrisModel) -> None:
    assert model.predict_batch([]) == []


@pytest.mark.parametrize(
    "change",
    [
        {"sepal_length": 3.9},
        {"sepal_length": 8.6},
        {"sepal_width": 5.1},
        {"petal_length": 0.0},
        {"petal_width": -0.1},
        {"petal_width": float("nan")},
        {"petal_width": "wide"},
        {"petal_width": True},  # pydantic alone takes it as 1.0
        {"sepal_length": False},
        {"colour": "blue"},
    ],
)
def test_input_schema_rejects(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        IrisModelInput(**(VALID | change))


def test_input_schema_takes_numbers_as_text_for_csv_files() -> None:
    # `hostd batch` reads a CSV file's cells as text.
    assert IrisModelInput.model_validate({name: str(value) for name, value in VALID.items()}) == IrisModelInput(**VALID)


def test_input_schema_requires_every_field() -> None:
    with pytest.raises(ValidationError):
        IrisModelInput(sepal_length=5.1, sepal_width=3.5, petal_length=1.4)  # type: ignore[call-arg]


def test_unknown_configuration_is_an_error() -> None:
    with pytest.raises(TypeError):
        IrisModel(seed=1)  # type: ignore[call-arg]


def test_parameters_load_from_the_package_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert IrisModel().predict(IrisModelInput(**VALID)).species is Species.setosa
