"""A scikit-learn estimator from a file: skops by default; joblib or pickle only with ``trust: true``.

    - class_path: hostd.runtimes.sklearn:SklearnModel
      configuration:
        uri: models/iris.skops        # .skops, or .joblib / .pkl / .pickle with trust: true
        name: iris                    # the model's name (default: the file's stem)
        version: 1.0.0
        sha256: 3f1c...               # optional: the file must hash to this
        probabilities: true           # with predict_proba: also each class's probability
        features: [a, b, c]           # only for an estimator fitted without feature names

Loading a joblib or pickle file runs whatever code it holds, so hostd loads one only when the
entry says ``trust: true``; skops loads only the types it trusts (``trusted_types`` adds more).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, TypeAdapter

from hostd.model import MLModel
from hostd.runtimes.artifact import ArtifactError, local_file
from hostd.runtimes.schemas import field_name, input_schema, output_schema

PICKLES = {".joblib", ".pkl", ".pickle"}


class SklearnModel(MLModel):
    deterministic = True

    def __init__(self, uri: str, name: str | None = None, version: str = "1.0.0", sha256: str | None = None,
                 trust: bool = False, trusted_types: list[str] | None = None, probabilities: bool = False,
                 features: list[str] | None = None, description: str | None = None) -> None:
        path = local_file(uri, sha256)
        self._name = name or path.stem
        self._version = version
        self._estimator = load_estimator(path, uri, trust, trusted_types or [])
        self._features = estimator_features(self._estimator, features, uri)
        # hostd orders the columns by these names itself and passes a plain matrix: without this,
        # scikit-learn would warn on every call that the matrix has no feature names.
        with contextlib.suppress(AttributeError):
            del self._estimator.feature_names_in_
        self._fields = [field_name(feature) for feature in self._features]
        self._probabilities = probabilities
        if probabilities and not hasattr(self._estimator, "predict_proba"):
            raise ArtifactError(f"{uri}: probabilities: true, but a {type(self._estimator).__name__} has no "
                                "predict_proba; remove the option")
        classes = getattr(self._estimator, "classes_", None)
        self._classes = classes.tolist() if classes is not None else None
        label = type(self._classes[0]) if self._classes else float
        self._input = input_schema(self._name, self._features)
        self._output = output_schema(self._name, label, self._classes, probabilities)
        self._outputs = TypeAdapter(list[self._output])  # type: ignore[name-defined]  # all rows in one call
        self._description = description or f"{type(self._estimator).__name__} from {Path(uri).name}"

    @property
    def display_name(self) -> str:  # type: ignore[override]
        return self._name

    @property
    def qualified_name(self) -> str:  # type: ignore[override]
        return self._name

    @property
    def description(self) -> str:  # type: ignore[override]
        return self._description

    @property
    def version(self) -> str:  # type: ignore[override]
        return self._version

    @property
    def input_schema(self) -> type[BaseModel]:  # type: ignore[override]
        return self._input

    @property
    def output_schema(self) -> type[BaseModel]:  # type: ignore[override]
        return self._output

    def predict(self, data: BaseModel) -> BaseModel:
        return self.predict_batch([data])[0]

    def predict_batch(self, data: list[BaseModel]) -> list[BaseModel]:
        if not data:
            return []
        matrix = np.array([[getattr(row, name) for name in self._fields] for row in data], dtype=np.float64)
        rows: list[dict[str, Any]] = [{"prediction": label} for label in self._estimator.predict(matrix).tolist()]
        if self._probabilities:
            names = [str(label) for label in self._classes or []]
            for row, probabilities in zip(rows, self._estimator.predict_proba(matrix).tolist(), strict=True):
                row["probabilities"] = dict(zip(names, probabilities, strict=True))
        return self._outputs.validate_python(rows)  # type: ignore[no-any-return]


def load_estimator(path: Path, uri: str, trust: bool, trusted_types: list[str]) -> Any:
    if path.suffix in PICKLES:
        if not trust:
            raise ArtifactError(f"{uri} is a {path.suffix} file: loading it runs any code it holds, so hostd "
                                "loads it only with trust: true in the entry's configuration (or save the "
                                "estimator with skops instead)")
        import joblib

        return joblib.load(path)
    if path.suffix != ".skops":
        raise ArtifactError(f"{uri}: not a scikit-learn file hostd knows (.skops, or .joblib/.pkl/.pickle "
                            "with trust: true)")
    import skops.io as sio

    try:
        untrusted = set(sio.get_untrusted_types(file=path))
    except Exception as exc:
        raise ArtifactError(f"{uri} is not a skops file ({type(exc).__name__}: {exc})") from None
    unknown = sorted(untrusted - set(trusted_types))
    if unknown:
        raise ArtifactError(f"{uri} holds types skops does not trust by default: {', '.join(unknown)}; "
                            "list them in trusted_types if you trust the file")
    return sio.load(path, trusted=sorted(untrusted))


def estimator_features(estimator: Any, features: list[str] | None, uri: str) -> list[str]:
    """The input's feature names: the estimator's own (``feature_names_in_``), else the configured
    ones, else f0..fN-1 from ``n_features_in_``; a configured list must match the estimator."""
    known = getattr(estimator, "feature_names_in_", None)
    count = getattr(estimator, "n_features_in_", None)
    if features is not None:
        if count is not None and len(features) != count:
            raise ArtifactError(f"{uri}: features lists {len(features)} names, but the estimator takes "
                                f"{count} features; list exactly {count}")
        return list(features)
    if known is not None:
        return [str(name) for name in known]
    if count is None:
        raise ArtifactError(f"{uri}: the estimator does not say how many features it takes; give them "
                            "in the configuration as features: [...]")
    return [f"f{i}" for i in range(count)]
