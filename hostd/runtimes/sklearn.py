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

from hostd.runtimes.artifact import ArtifactError, fetch
from hostd.runtimes.tabular import TabularModel, feature_list

PICKLES = {".joblib", ".pkl", ".pickle"}


class SklearnModel(TabularModel):
    def __init__(self, uri: str, name: str | None = None, version: str = "1.0.0", sha256: str | None = None,
                 trust: bool = False, trusted_types: list[str] | None = None, probabilities: bool = False,
                 features: list[str] | None = None, description: str | None = None,
                 storage_options: dict[str, Any] | None = None, deterministic: bool = True) -> None:
        path = fetch(uri, sha256, storage_options)
        self._estimator = load_estimator(path, uri, trust, trusted_types or [])
        known = getattr(self._estimator, "feature_names_in_", None)
        columns = feature_list(getattr(self._estimator, "n_features_in_", None),
                               None if known is None else known.tolist(), features, uri)
        # hostd orders the columns by these names itself and passes a plain matrix: without this,
        # scikit-learn would warn on every call that the matrix has no feature names.
        with contextlib.suppress(AttributeError):
            del self._estimator.feature_names_in_
        if probabilities and not hasattr(self._estimator, "predict_proba"):
            raise ArtifactError(f"{uri}: probabilities: true, but a {type(self._estimator).__name__} has no "
                                "predict_proba; remove the option")
        classes = getattr(self._estimator, "classes_", None)
        super().__init__(uri=uri, name=name or path.stem, version=version, features=columns,
                         classes=None if classes is None else classes.tolist(), probabilities=probabilities,
                         description=description or f"{type(self._estimator).__name__} from {path.name}",
                         deterministic=deterministic)

    def predict_matrix(self, matrix: np.ndarray) -> list[Any]:
        return self._estimator.predict(matrix).tolist()  # type: ignore[no-any-return]

    def probability_matrix(self, matrix: np.ndarray) -> list[list[float]]:
        return self._estimator.predict_proba(matrix).tolist()  # type: ignore[no-any-return]


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
