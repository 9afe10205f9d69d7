"""Iris species classifier: logistic regression on Fisher's iris measurements."""

from __future__ import annotations

import operator
from importlib import resources

import numpy as np
import skops.io as sio
from pydantic import BaseModel
from sklearn.linear_model import LogisticRegression

from hostd import MLModel
from iris_model import __version__
from iris_model.schemas import IrisModelInput, IrisModelOutput, Species

PARAMETERS_FILE = "model_files/model.skops"
#: Types in the parameters file that skops does not trust by default; train.py checks this list.
TRUSTED_TYPES: list[str] = []
#: Feature columns in training order: the input schema's field order.
FEATURES: tuple[str, ...] = tuple(IrisModelInput.model_fields)


def load_parameters() -> LogisticRegression:
    """Load the trained classifier shipped with the package."""
    source = resources.files(__package__).joinpath(PARAMETERS_FILE)
    with resources.as_file(source) as path:
        estimator = sio.load(path, trusted=TRUSTED_TYPES)
    if not isinstance(estimator, LogisticRegression):
        raise TypeError(f"{PARAMETERS_FILE} holds a {type(estimator).__name__}, not a LogisticRegression")
    return estimator


_feature_values = operator.attrgetter(*FEATURES)


def features(data: list[IrisModelInput]) -> np.ndarray:
    """The inputs as a float64 matrix, one row per input."""
    return np.array([_feature_values(item) for item in data], dtype=np.float64)


class IrisModel(MLModel):
    """Predicts the species of an iris flower from its sepal and petal measurements."""

    deterministic = True

    def __init__(self) -> None:
        self._estimator = load_parameters()

    @property
    def display_name(self) -> str:
        return "Iris Model"

    @property
    def qualified_name(self) -> str:
        return "iris_model"

    @property
    def description(self) -> str:
        return "Predicts the species of an iris flower from its sepal and petal measurements."

    @property
    def version(self) -> str:
        return __version__

    @property
    def input_schema(self) -> type[BaseModel]:
        return IrisModelInput

    @property
    def output_schema(self) -> type[BaseModel]:
        return IrisModelOutput

    def predict(self, data: IrisModelInput) -> IrisModelOutput:
        return self.predict_batch([data])[0]

    def predict_batch(self, data: list[IrisModelInput]) -> list[IrisModelOutput]:
        if not data:
            return []
        labels = self._estimator.predict(features(data))
        return [IrisModelOutput(species=Species(label)) for label in labels]
