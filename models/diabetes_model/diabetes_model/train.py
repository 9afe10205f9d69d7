"""Retrain the diabetes model from scikit-learn's bundled dataset: ``python -m diabetes_model.train``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.linear_model import BayesianRidge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from diabetes_model.model import FEATURES, PARAMETERS_FILE, TRUSTED_TYPES
from hostd.artifacts import train_command

DEFAULT_OUTPUT = Path(__file__).parent / PARAMETERS_FILE


def load_training_data() -> tuple[np.ndarray, np.ndarray]:
    """The 442 patients' baseline variables in raw units, and their progression one year on."""
    dataset = load_diabetes(scaled=False)
    if tuple(dataset.feature_names) != FEATURES:
        raise RuntimeError(f"dataset columns {dataset.feature_names} do not match the schema {FEATURES}")
    return dataset.data, dataset.target


def make_estimator() -> Pipeline:
    # Raw units differ by orders of magnitude; standardising makes the shared weight prior fair.
    return make_pipeline(StandardScaler(), BayesianRidge())


def main(argv: list[str] | None = None) -> None:
    train_command(argv, description=__doc__ or "", output=DEFAULT_OUTPUT, trusted=TRUSTED_TYPES,
                  load_training_data=load_training_data, make_estimator=make_estimator, score="R²")


if __name__ == "__main__":
    main()
