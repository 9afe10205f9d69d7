"""Retrain the diabetes model from scikit-learn's bundled dataset: ``python -m diabetes_model.train``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.linear_model import BayesianRidge
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from diabetes_model.model import FEATURES, PARAMETERS_FILE, TRUSTED_TYPES
from hostd.artifacts import save_skops

logger = logging.getLogger(__name__)
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write model.skops")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    x, y = load_training_data()
    logger.info("5-fold cross-validated R²: %.3f", cross_val_score(make_estimator(), x, y, cv=5).mean())
    size = save_skops(make_estimator().fit(x, y), args.output, TRUSTED_TYPES)
    logger.info("wrote %s (%d bytes)", args.output, size)


if __name__ == "__main__":
    main()
