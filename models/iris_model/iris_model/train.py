"""Retrain the iris model from scikit-learn's bundled dataset: ``python -m iris_model.train``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from hostd.artifacts import train_command
from iris_model.model import FEATURES, PARAMETERS_FILE, TRUSTED_TYPES
from iris_model.schemas import Species

DEFAULT_OUTPUT = Path(__file__).parent / PARAMETERS_FILE


def load_training_data() -> tuple[np.ndarray, np.ndarray]:
    """Features in schema order and species labels (the output enum's values)."""
    dataset = load_iris()
    names = tuple(name.removesuffix(" (cm)").replace(" ", "_") for name in dataset.feature_names)
    if names != FEATURES:
        raise RuntimeError(f"dataset columns {names} do not match the input schema {FEATURES}")
    species = [Species(f"Iris {name}") for name in dataset.target_names]
    labels = np.array([species[index].value for index in dataset.target])
    return dataset.data, labels


def make_estimator() -> LogisticRegression:
    # The lbfgs solver needs ~100 iterations on unscaled iris; 1000 leaves room to converge quietly.
    return LogisticRegression(max_iter=1000)


def main(argv: list[str] | None = None) -> None:
    train_command(argv, description=__doc__ or "", output=DEFAULT_OUTPUT, trusted=TRUSTED_TYPES,
                  load_training_data=load_training_data, make_estimator=make_estimator, score="accuracy")


if __name__ == "__main__":
    main()
