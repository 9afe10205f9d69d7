"""What every tabular runtime shares: a fixed list of numeric features in, a prediction (and, for a
classifier, each class's probability) out; the generated schemas and the batch path.

A runtime loads its artifact, works out the features, the classes and how to predict a matrix, and
hands them to ``TabularModel``; nothing downstream can tell it from a hand-written model.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from hostd.runtimes.artifact import ArtifactError
from hostd.runtimes.runtime import Runtime
from hostd.runtimes.schemas import field_name, input_schema, output_schema


class TabularModel(Runtime):

    def __init__(self, *, uri: str, name: str, version: str, description: str, features: list[str],
                 classes: list[Any] | None, probabilities: bool, label: type | None = None,
                 dtype: Any = np.float64, deterministic: bool = True) -> None:
        if probabilities and not classes:
            raise ArtifactError(f"{uri}: probabilities: true, but the model is not a classifier that gives "
                                "them; remove the option")
        self._features = features
        self._fields = [field_name(feature) for feature in features]
        self._classes = classes
        self._probabilities = probabilities
        self._dtype = dtype  # of the matrix the model is given
        label = label or (type(classes[0]) if classes else float)
        self.describe(name, version, description, input_schema(name, features),
                      output_schema(name, label, classes, probabilities), deterministic)

    def predict_batch(self, data: list[BaseModel]) -> list[BaseModel]:
        if not data:
            return []
        matrix = np.array([[getattr(row, name) for name in self._fields] for row in data], dtype=self._dtype)
        labels, probabilities = self.predict_rows(matrix)
        rows: list[dict[str, Any]] = [{"prediction": label} for label in labels]
        if probabilities is not None:
            names = [str(label) for label in self._classes or []]
            for row, row_probabilities in zip(rows, probabilities, strict=True):
                row["probabilities"] = dict(zip(names, row_probabilities, strict=True))
        return self.outputs(rows)

    def predict_rows(self, matrix: np.ndarray) -> tuple[list[Any], list[list[float]] | None]:
        """Each row's prediction and, if asked for, its probabilities; a runtime that gets both from one
        call (ONNX) overrides this."""
        return self.predict_matrix(matrix), self.probability_matrix(matrix) if self._probabilities else None

    @abstractmethod
    def predict_matrix(self, matrix: np.ndarray) -> list[Any]:
        """One prediction per row: a class (one of ``classes``) or a number."""

    def probability_matrix(self, matrix: np.ndarray) -> list[list[float]]:
        """Each row's probability of each class, in ``classes`` order (classifiers only)."""
        raise NotImplementedError


def feature_list(count: int | None, known: Sequence[str] | None, configured: list[str] | None,
                 uri: str) -> list[str]:
    """The input's features: the configured list (which must have ``count`` names), else the names the
    artifact knows, else f0..fN-1."""
    if configured is not None:
        if count is not None and len(configured) != count:
            raise ArtifactError(f"{uri}: features lists {len(configured)} names, but the model takes "
                                f"{count} features; list exactly {count}")
        return list(configured)
    if known:
        return [str(name) for name in known]
    if count is None:
        raise ArtifactError(f"{uri}: the model does not say how many features it takes; give them "
                            "in the configuration as features: [...]")
    return [f"f{i}" for i in range(count)]
