"""Retrain the digits model from scikit-learn's bundled dataset: ``python -m digits_model.train``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier

from digits_model.model import PARAMETERS_FILE, TRUSTED_TYPES
from hostd.artifacts import train_command

DEFAULT_OUTPUT = Path(__file__).parent / PARAMETERS_FILE


def load_training_data() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 images flattened to 64 pixels (row by row) and their digits."""
    dataset = load_digits()
    return dataset.data, dataset.target


def make_estimator() -> RandomForestClassifier:
    # Depth 10 scores as well as unbounded trees in cross-validation and keeps the file under 1 MB.
    return RandomForestClassifier(n_estimators=100, max_depth=10, random_state=0)


def main(argv: list[str] | None = None) -> None:
    train_command(argv, description=__doc__ or "", output=DEFAULT_OUTPUT, trusted=TRUSTED_TYPES,
                  load_training_data=load_training_data, make_estimator=make_estimator, score="accuracy")


if __name__ == "__main__":
    main()
