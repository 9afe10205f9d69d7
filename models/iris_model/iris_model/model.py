"""Iris species classifier: logistic regression on Fisher's iris measurements."""

from __future__ import annotations

import operator

import numpy as np
from pydantic import TypeAdapter
from sklearn.linear_model import LogisticRegression

from hostd import MLModel
from hostd.artifacts import load_skops
from iris_model import __version__
from iris_model.schemas import IrisModelInput, IrisModelOutput

PARAMETERS_FILE = "model_files/model.skops"
#: Types in the parameters file that skops does not trust by default; train.py checks this list.
TRUSTED_TYPES: list[str] = []
#: Feature columns in training order: the input schema's field order.
FEATURES: tuple[str, ...] = tuple(IrisModelInput.model_fields)


def load_parameters() -> LogisticRegression:
    """Load the trained classifier shipped with the package."""
    return load_skops(__package__, PARAMETERS_FILE, LogisticRegression, TRUSTED_TYPES)


_feature_values = operator.attrgetter(*FEATURES)
OUTPUTS = TypeAdapter(list[IrisModelOutput])


def features(data: list[IrisModelInput]) -> np.ndarray:
    """The inputs as a float64 matrix, one row per input."""
    return np.array([_feature_values(item) for item in data], dtype=np.float64)


class IrisModel(MLModel):
    """Predicts the species of an iris flower from its sepal and petal measurements."""

    display_name = "Iris Model"
    qualified_name = "iris_model"
    description = "Predicts the species of an iris flower from its sepal and petal measurements."
    version = __version__
    input_schema = IrisModelInput
    output_schema = IrisModelOutput
    deterministic = True

    def __init__(self) -> None:
        self._estimator = load_parameters()

    def predict(self, data: IrisModelInput) -> IrisModelOutput:
        return self.predict_batch([data])[0]

    def predict_batch(self, data: list[IrisModelInput]) -> list[IrisModelOutput]:
        if not data:
            return []
        labels = self._estimator.predict(features(data))
        # All the rows' outputs in one pydantic-core call: building them one by one cost more than
        # predicting (model_construct too: it is Python, row by row).
        return OUTPUTS.validate_python([{"species": label} for label in labels.tolist()])
