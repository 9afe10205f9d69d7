"""The diabetes model package: parameters, predictions, randomness, schemas, packaging."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diabetes_model.model import FEATURES, DiabetesModel
from diabetes_model.schemas import DiabetesModelInput, DiabetesModelOutput
from pydantic import ValidationError
from sklearn.datasets import load_diabetes

from hostd import MLModel
from hostd.model import check_model

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
# The dataset's first patient.
VALID = {
    "age": 59.0, "sex": 2.0, "bmi": 32.1, "bp": 101.0, "s1": 157.0,
    "s2": 93.2, "s3": 38.0, "s4": 4.0, "s5": 4.8598, "s6": 87.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def model() -> DiabetesModel:
    return DiabetesModel()


@pytest.fixture(scope="module")
def dataset() -> tuple[list[DiabetesModelInput], np.ndarray]:
    diabetes = load_diabetes(scaled=False)
    inputs = [DiabetesModelInput(**dict(zip(FEATURES, row, strict=True))) for row in diabetes.data]
    return inputs, diabetes.target


def progressions(outputs: list[DiabetesModelOutput]) -> np.ndarray:
    return np.array([output.progression for output in outputs])


def test_fits_the_model_contract(model: DiabetesModel) -> None:
    check_model(model)
    assert isinstance(model, MLModel)
    assert model.qualified_name == "diabetes_model"
    assert model.description
    assert model.deterministic is False
    assert model.input_schema is DiabetesModelInput
    assert model.output_schema is DiabetesModelOutput


def test_version_is_semver_and_matches_the_distribution(model: DiabetesModel) -> None:
    assert SEMVER.match(model.version)
    assert model.version == metadata.version("diabetes_model")


def test_predictions_are_plausible(
    model: DiabetesModel, dataset: tuple[list[DiabetesModelInput], np.ndarray]
) -> None:
    inputs, target = dataset
    outputs = model.predict_batch(inputs)
    predicted = progressions(outputs)
    assert predicted.min() > 0 and predicted.max() < 400
    r_squared = 1 - np.sum((target - predicted) ** 2) / np.sum((target - target.mean()) ** 2)
    assert r_squared >= 0.45
    assert all(40 < output.std < 70 for output in outputs)


def test_sample_varies_but_progression_does_not(model: DiabetesModel) -> None:
    outputs = [model.predict(DiabetesModelInput(**VALID)) for _ in range(5)]
    assert len({output.progression for output in outputs}) == 1
    assert len({output.std for output in outputs}) == 1
    assert len({output.sample for output in outputs}) == 5


def test_samples_follow_the_predictive_distribution(model: DiabetesModel) -> None:
    outputs = model.predict_batch([DiabetesModelInput(**VALID)] * 4000)
    samples = np.array([output.sample for output in outputs])
    mean, std = outputs[0].progression, outputs[0].std
    assert abs(samples.mean() - mean) < 4 * std / np.sqrt(len(samples))
    assert samples.std() == pytest.approx(std, rel=0.1)


def test_seed_makes_samples_reproducible() -> None:
    data = DiabetesModelInput(**VALID)
    first, second, other = DiabetesModel(seed=7), DiabetesModel(seed=7), DiabetesModel(seed=8)
    draws = [first.predict(data).sample for _ in range(3)]
    assert draws == [second.predict(data).sample for _ in range(3)]
    assert draws != [other.predict(data).sample for _ in range(3)]


def test_predict_batch_equals_predict(dataset: tuple[list[DiabetesModelInput], np.ndarray]) -> None:
    inputs = dataset[0][:50]
    batch = DiabetesModel(seed=3).predict_batch(inputs)
    looped_model = DiabetesModel(seed=3)
    looped = [looped_model.predict(item) for item in inputs]
    # Same seed, same stream, so samples match too; all equal up to rounding (a matrix product
    # over many rows may round differently from one row).
    for field in ("progression", "std", "sample"):
        assert [getattr(o, field) for o in batch] == pytest.approx([getattr(o, field) for o in looped])


def test_predict_batch_of_nothing(model: DiabetesModel) -> None:
    assert model.predict_batch([]) == []


def test_every_patient_fits_the_input_schema(dataset: tuple[list[DiabetesModelInput], np.ndarray]) -> None:
    assert len(dataset[0]) == 442


@pytest.mark.parametrize(
    "change",
    [
        {"age": 17.0},
        {"age": 120.0},
        {"sex": 0.0},
        {"sex": 1.5},
        {"sex": True},  # pydantic alone takes it as 1.0, a valid code
        {"s4": True},
        {"age": "old"},
        {"bmi": 60.0},
        {"bp": 20.0},
        {"s5": float("nan")},
        {"s6": float("inf")},
        {"weight": 80.0},
    ],
)
def test_input_schema_rejects(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DiabetesModelInput(**(VALID | change))


def test_json_schema_says_sex_is_1_or_2() -> None:
    # A client (or a fuzzer) reading the schema could only learn "a number from 1 to 2", so 1.5.
    sex = DiabetesModelInput.model_json_schema()["properties"]["sex"]
    assert sex["enum"] == [1, 2] and sex["type"] == "number"
    assert DiabetesModelInput(**(VALID | {"sex": 1})).sex == 1.0
    assert DiabetesModelInput(**(VALID | {"sex": "2"})).sex == 2.0  # a CSV cell


def test_input_schema_requires_every_field() -> None:
    with pytest.raises(ValidationError):
        DiabetesModelInput(**{name: value for name, value in VALID.items() if name != "s6"})


def test_unknown_configuration_is_an_error() -> None:
    with pytest.raises(TypeError):
        DiabetesModel(sede=1)  # type: ignore[call-arg]


def test_parameters_load_from_the_package_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert DiabetesModel(seed=0).predict(DiabetesModelInput(**VALID)).std > 0
