"""Diabetes progression regressor: Bayesian ridge regression on standardised baseline variables."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import BayesianRidge
from sklearn.pipeline import Pipeline

from diabetes_model import __version__
from diabetes_model.schemas import DiabetesModelInput, DiabetesModelOutput
from hostd import MLModel
from hostd.artifacts import load_skops

PARAMETERS_FILE = "model_files/model.skops"
#: Types in the parameters file that skops does not trust by default; train.py checks this list.
TRUSTED_TYPES: list[str] = []
#: Feature columns in training order: the input schema's field order.
FEATURES: tuple[str, ...] = tuple(DiabetesModelInput.model_fields)


def load_parameters() -> Pipeline:
    """Load the trained pipeline (scaler, Bayesian ridge) shipped with the package."""
    estimator = load_skops(__package__, PARAMETERS_FILE, Pipeline, TRUSTED_TYPES)
    if not isinstance(estimator[-1], BayesianRidge):
        raise TypeError(f"{__package__}/{PARAMETERS_FILE} does not hold a pipeline ending in BayesianRidge")
    return estimator


def features(data: list[DiabetesModelInput]) -> np.ndarray:
    """The inputs as a float64 matrix, one row per input."""
    return np.array([[getattr(item, name) for name in FEATURES] for item in data], dtype=np.float64)


class DiabetesModel(MLModel):
    """Predicts diabetes progression one year on, with its uncertainty and one random draw.

    ``seed`` (configuration) seeds the draws; None (the default) takes fresh entropy.
    """

    display_name = "Diabetes Model"
    qualified_name = "diabetes_model"
    description = (
        "Predicts disease progression one year after baseline from ten baseline variables, "
        "with the predictive standard deviation and one draw from the predictive distribution."
    )
    version = __version__
    input_schema = DiabetesModelInput
    output_schema = DiabetesModelOutput
    # ``sample`` is random, so the same input gives different outputs.
    deterministic = False

    def __init__(self, *, seed: int | None = None) -> None:
        self._estimator = load_parameters()
        self._rng = np.random.default_rng(seed)

    def predict(self, data: DiabetesModelInput) -> DiabetesModelOutput:
        return self.predict_batch([data])[0]

    def predict_batch(self, data: list[DiabetesModelInput]) -> list[DiabetesModelOutput]:
        if not data:
            return []
        means, stds = self._estimator.predict(features(data), return_std=True)
        samples = self._rng.normal(means, stds)
        return [
            DiabetesModelOutput(progression=float(mean), std=float(std), sample=float(sample))
            for mean, std, sample in zip(means, stds, samples, strict=True)
        ]
