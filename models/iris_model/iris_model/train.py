"""Retrain the iris model from scikit-learn's bundled dataset: ``python -m iris_model.train``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from hostd.artifacts import save_skops
from iris_model.model import FEATURES, PARAMETERS_FILE, TRUSTED_TYPES
from iris_model.schemas import Species

logger = logging.getLogger(__name__)
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write model.skops")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    x, y = load_training_data()
    logger.info("5-fold cross-validated accuracy: %.3f", cross_val_score(make_estimator(), x, y, cv=5).mean())
    size = save_skops(make_estimator().fit(x, y), args.output, TRUSTED_TYPES)
    logger.info("wrote %s (%d bytes)", args.output, size)


if __name__ == "__main__":
    main()
