"""Diabetes progression regressor: Bayesian ridge regression on standardised baseline variables."""

from __future__ import annotations

from importlib import resources

import numpy as np
import skops.io as sio
from pydantic import BaseModel
from sklearn.linear_model import BayesianRidge
from sklearn.pipeline import Pipeline

from diabetes_model import __version__
from diabetes_model.schemas import DiabetesModelInput, DiabetesModelOutput
from hostd import MLModel

PARAMETERS_FILE = "model_files/model.skops"
#: Types in the parameters file that skops does not trust by default; train.py checks this list.
TRUSTED_TYPES: list[str] = []
#: Feature columns in training order: the input schema's field order.
FEATURES: tuple[str, ...] = tuple(DiabetesModelInput.model_fields)


def load_parameters() -> Pipeline:
    """Load the trained pipeline (scaler, Bayesian ridge) shipped with the package."""
    source = resources.files(__package__).joinpath(PARAMETERS_FILE)
    with resources.as_file(source) as path:
        estimator = sio.load(path, trusted=TRUSTED_TYPES)
    if not (isinstance(estimator, Pipeline) and isinstance(estimator[-1], BayesianRidge)):
        raise TypeError(f"{PARAMETERS_FILE} does not hold a pipeline ending in BayesianRidge")
    return estimator


def features(data: list[DiabetesModelInput]) -> np.ndarray:
    """The inputs as a float64 matrix, one row per input."""
    return np.array([[getattr(item, name) for name in FEATURES] for item in data], dtype=np.float64)


class DiabetesModel(MLModel):
    """Predicts diabetes progression one year on, with its uncertainty and one random draw.

    ``seed`` (configuration) seeds the draws; None (the default) takes fresh entropy.
    """

    # ``sample`` is random, so the same input gives different outputs.
    deterministic = False

    def __init__(self, *, seed: int | None = None) -> None:
        self._estimator = load_parameters()
        self._rng = np.random.default_rng(seed)

    @property
    def display_name(self) -> str:
        return "Diabetes Model"

    @property
    def qualified_name(self) -> str:
        return "diabetes_model"

    @property
    def description(self) -> str:
        return (
            "Predicts disease progression one year after baseline from ten baseline variables, "
            "with the predictive standard deviation and one draw from the predictive distribution."
        )

    @property
    def version(self) -> str:
        return __version__

    @property
    def input_schema(self) -> type[BaseModel]:
        return DiabetesModelInput

    @property
    def output_schema(self) -> type[BaseModel]:
        return DiabetesModelOutput

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
