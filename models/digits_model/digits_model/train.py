"""Retrain the digits model from scikit-learn's bundled dataset: ``python -m digits_model.train``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import cross_val_score

from digits_model.model import PARAMETERS_FILE, TRUSTED_TYPES
from hostd.artifacts import save_skops

logger = logging.getLogger(__name__)
DEFAULT_OUTPUT = Path(__file__).parent / PARAMETERS_FILE


def load_training_data() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 images flattened to 64 pixels (row by row) and their digits."""
    dataset = load_digits()
    return dataset.data, dataset.target


def make_estimator() -> RandomForestClassifier:
    # Depth 10 scores as well as unbounded trees in cross-validation and keeps the file under 1 MB.
    return RandomForestClassifier(n_estimators=100, max_depth=10, random_state=0)


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
