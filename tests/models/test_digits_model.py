"""The digits model package: parameters, predictions, schemas, packaging."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from digits_model.model import DigitsModel
from digits_model.schemas import DigitsModelInput, DigitsModelOutput
from pydantic import ValidationError
from sklearn.datasets import load_digits

from hostd import MLModel
from hostd.model import check_model

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
BLANK = [[0] * 8 for _ in range(8)]


@pytest.fixture(scope="module")
def model() -> DigitsModel:
    return DigitsModel()


@pytest.fixture(scope="module")
def first_200() -> tuple[list[DigitsModelInput], list[int]]:
    digits = load_digits()
    inputs = [DigitsModelInput(image=image.astype(int).tolist()) for image in digits.images[:200]]
    return inputs, [int(target) for target in digits.target[:200]]


def test_fits_the_model_contract(model: DigitsModel) -> None:
    check_model(model)
    assert isinstance(model, MLModel)
    assert model.qualified_name == "digits_model"
    assert model.display_name == "Digits Model"
    assert model.description
    assert model.deterministic is True
    assert model.input_schema is DigitsModelInput
    assert model.output_schema is DigitsModelOutput


def test_version_is_semver_and_matches_the_distribution(model: DigitsModel) -> None:
    assert SEMVER.match(model.version)
    assert model.version == metadata.version("digits_model")


def test_accuracy_on_the_first_200_images(
    model: DigitsModel, first_200: tuple[list[DigitsModelInput], list[int]]
) -> None:
    inputs, targets = first_200
    outputs = model.predict_batch(inputs)
    correct = sum(output.digit == target for output, target in zip(outputs, targets, strict=True))
    assert correct / len(targets) >= 0.95


def test_output_is_a_digit_and_its_probability(
    model: DigitsModel, first_200: tuple[list[DigitsModelInput], list[int]]
) -> None:
    inputs, targets = first_200
    output = model.predict(inputs[0])
    assert output.digit == targets[0] == 0
    assert 0.5 < output.probability <= 1.0


def test_predict_batch_equals_predict(
    model: DigitsModel, first_200: tuple[list[DigitsModelInput], list[int]]
) -> None:
    inputs, _ = first_200
    assert model.predict_batch(inputs[:50]) == [model.predict(item) for item in inputs[:50]]


def test_predict_batch_of_nothing(model: DigitsModel) -> None:
    assert model.predict_batch([]) == []


@pytest.mark.parametrize(
    "image",
    [
        BLANK[:7],
        [*BLANK, [0] * 8],
        [[0] * 7, *BLANK[1:]],
        [[0] * 9, *BLANK[1:]],
        [[17] + [0] * 7, *BLANK[1:]],
        [[-1] + [0] * 7, *BLANK[1:]],
        [[3.5] + [0] * 7, *BLANK[1:]],
        [0] * 64,
        [[False] + [0] * 7, *BLANK[1:]],
        [[True] + [0] * 7, *BLANK[1:]],
        [["3"] + [0] * 7, *BLANK[1:]],
    ],
    ids=["7 rows", "9 rows", "row of 7", "row of 9", "pixel 17", "pixel -1", "fractional pixel", "flat",
         "pixel false", "pixel true", "pixel text"],
)
def test_input_schema_rejects(image: object) -> None:
    with pytest.raises(ValidationError):
        DigitsModelInput(image=image)  # type: ignore[arg-type]


def test_a_whole_number_as_a_float_is_a_pixel() -> None:
    # JSON Schema's integer includes 3.0, and an FP32 tensor of pixels holds nothing else.
    image = DigitsModelInput.model_validate_json(f'{{"image": {[[3.0] * 8] * 8}}}').image
    assert image == [[3] * 8] * 8 and isinstance(image[0][0], int)


def test_json_schema_states_the_shape() -> None:
    image = DigitsModelInput.model_json_schema()["properties"]["image"]
    assert (image["minItems"], image["maxItems"]) == (8, 8)
    assert (image["items"]["minItems"], image["items"]["maxItems"]) == (8, 8)
    assert (image["items"]["items"]["minimum"], image["items"]["items"]["maximum"]) == (0, 16)


def test_unknown_configuration_is_an_error() -> None:
    with pytest.raises(TypeError):
        DigitsModel(trees=10)  # type: ignore[call-arg]


def test_parameters_load_from_the_package_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert 0 <= DigitsModel().predict(DigitsModelInput(image=BLANK)).digit <= 9
