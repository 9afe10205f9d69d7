"""Handwritten digit classifier: a random forest on scikit-learn's 8x8 digits."""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from digits_model import __version__
from digits_model.schemas import DigitsModelInput, DigitsModelOutput
from hostd import MLModel
from hostd.artifacts import load_skops

PARAMETERS_FILE = "model_files/model.skops"
#: Types in the parameters file that skops does not trust by default; train.py checks this list.
TRUSTED_TYPES: list[str] = ["sklearn.tree._tree.Tree"]


def load_parameters() -> RandomForestClassifier:
    """Load the trained classifier shipped with the package."""
    return load_skops(__package__, PARAMETERS_FILE, RandomForestClassifier, TRUSTED_TYPES)


def features(data: list[DigitsModelInput]) -> np.ndarray:
    """The images flattened row by row into a float64 matrix, one row per image (as in training)."""
    return np.array([item.image for item in data], dtype=np.float64).reshape(len(data), 64)


class DigitsModel(MLModel):
    """Recognises a handwritten digit in an 8x8 image."""

    display_name = "Digits Model"
    qualified_name = "digits_model"
    description = "Recognises a handwritten digit (0-9) in an 8x8 grey-scale image with 17 grey levels."
    version = __version__
    input_schema = DigitsModelInput
    output_schema = DigitsModelOutput
    deterministic = True

    def __init__(self) -> None:
        self._estimator = load_parameters()

    def predict(self, data: DigitsModelInput) -> DigitsModelOutput:
        return self.predict_batch([data])[0]

    def predict_batch(self, data: list[DigitsModelInput]) -> list[DigitsModelOutput]:
        if not data:
            return []
        probabilities = self._estimator.predict_proba(features(data))
        best = probabilities.argmax(axis=1)
        digits = self._estimator.classes_[best]
        return [
            DigitsModelOutput(digit=int(digit), probability=float(row[index]))
            for digit, row, index in zip(digits, probabilities, best, strict=True)
        ]
