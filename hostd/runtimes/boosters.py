"""Gradient-boosted trees from their own model files: XGBoost (JSON or UBJSON, from a ``Booster`` or
the scikit-learn wrappers' ``save_model``) and LightGBM (the model text of ``Booster.save_model``).

    - class_path: hostd.runtimes.boosters:XGBoostModel      # or LightGBMModel
      configuration:
        uri: models/flowers.json      # .json / .ubj (XGBoost), .txt (LightGBM)
        classes: [setosa, versicolor, virginica]   # labels for class 0, 1, ...; default: the numbers
        probabilities: true
        features: [a, b, c]           # default: the names in the file, else f0..fN-1

Neither format runs code when loaded. What the model predicts comes from its objective: a class for
classification (``binary:logistic``, ``multi:softprob``, LightGBM's ``binary`` and ``multiclass``;
the class with the highest probability, a binary one above 0.5) and a number otherwise.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from hostd.runtimes.artifact import ArtifactError, fetch
from hostd.runtimes.tabular import TabularModel, feature_list

#: LightGBM names a numpy-trained model's features Column_0, Column_1...: no names, really.
_UNNAMED = "Column_"


class _Booster(TabularModel):
    """A booster whose raw prediction is a probability per class (or one, binary), or a number."""

    kind = ""  # for messages

    def __init__(self, *, uri: str, path_stem: str, name: str | None, version: str, probabilities: bool,
                 description: str | None, features: list[str], class_count: int,
                 classes: list[Any] | None, deterministic: bool) -> None:
        if classes is not None and class_count and len(classes) != class_count:
            raise ArtifactError(f"{uri}: classes lists {len(classes)} labels, but the model has {class_count} "
                                f"classes; list exactly {class_count}")
        if classes is not None and not class_count:
            raise ArtifactError(f"{uri}: classes given, but the model is a regressor; remove them")
        self._class_count = class_count
        labels = classes if classes is not None else list(range(class_count)) or None
        super().__init__(uri=uri, name=name or path_stem, version=version, features=features, classes=labels,
                         probabilities=probabilities,
                         description=description or f"{self.kind} {'classifier' if class_count else 'regressor'}",
                         deterministic=deterministic)

    def raw(self, matrix: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def probability_matrix(self, matrix: np.ndarray) -> list[list[float]]:
        scores = self.raw(matrix)
        if self._class_count == 2 and scores.ndim == 1:  # the probability of class 1
            scores = np.column_stack([1 - scores, scores])
        return scores.tolist()  # type: ignore[no-any-return]

    def predict_matrix(self, matrix: np.ndarray) -> list[Any]:
        if not self._class_count:
            return self.raw(matrix).tolist()  # type: ignore[no-any-return]
        labels = self._classes or []
        return [labels[index] for index in np.argmax(self.probability_matrix(matrix), axis=1).tolist()]


class XGBoostModel(_Booster):
    kind = "XGBoost"

    def __init__(self, uri: str, name: str | None = None, version: str = "1.0.0", sha256: str | None = None,
                 classes: list[Any] | None = None, probabilities: bool = False,
                 features: list[str] | None = None, description: str | None = None,
                 storage_options: dict[str, Any] | None = None, deterministic: bool = True) -> None:
        import xgboost

        path = fetch(uri, sha256, storage_options)
        if path.suffix not in (".json", ".ubj"):
            raise ArtifactError(f"{uri}: not an XGBoost model file hostd knows (.json or .ubj from save_model)")
        self._booster = xgboost.Booster()
        try:
            self._booster.load_model(str(path))
        except xgboost.core.XGBoostError as exc:
            raise ArtifactError(f"{uri} is not an XGBoost model ({str(exc).splitlines()[0]})") from None
        objective = json.loads(self._booster.save_config())["learner"]["objective"]["name"]
        if objective.startswith("multi:softmax"):
            raise ArtifactError(f"{uri}: objective multi:softmax gives no probabilities; train with "
                                "multi:softprob (what XGBClassifier uses)")
        class_count = _xgboost_classes(self._booster, objective)
        self._dmatrix = xgboost.DMatrix
        super().__init__(uri=uri, path_stem=path.stem, name=name, version=version, probabilities=probabilities,
                         description=description, class_count=class_count, classes=classes, deterministic=deterministic,
                         features=feature_list(self._booster.num_features(), self._booster.feature_names, features,
                                               uri))
        self._booster.feature_names = None  # hostd passes the columns in order, unnamed

    def raw(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self._booster.predict(self._dmatrix(matrix)))


def _xgboost_classes(booster: Any, objective: str) -> int:
    if objective.startswith("binary:"):
        return 2
    if objective.startswith("multi:"):
        return int(json.loads(booster.save_config())["learner"]["learner_model_param"]["num_class"])
    return 0


class LightGBMModel(_Booster):
    kind = "LightGBM"

    def __init__(self, uri: str, name: str | None = None, version: str = "1.0.0", sha256: str | None = None,
                 classes: list[Any] | None = None, probabilities: bool = False,
                 features: list[str] | None = None, description: str | None = None,
                 storage_options: dict[str, Any] | None = None, deterministic: bool = True) -> None:
        import lightgbm

        path = fetch(uri, sha256, storage_options)
        try:
            self._booster = lightgbm.Booster(model_file=str(path))
        except lightgbm.basic.LightGBMError as exc:
            raise ArtifactError(f"{uri} is not a LightGBM model text file ({exc})") from None
        objective = str(self._booster.dump_model().get("objective", ""))
        class_count = 2 if objective.startswith("binary") else \
            int(objective.split("num_class:")[1].split()[0]) if objective.startswith("multiclass") else 0
        known = [n for n in self._booster.feature_name() if not n.startswith(_UNNAMED)]
        super().__init__(uri=uri, path_stem=path.stem, name=name, version=version, probabilities=probabilities,
                         description=description, class_count=class_count, classes=classes, deterministic=deterministic,
                         features=feature_list(self._booster.num_feature(), known or None, features, uri))

    def raw(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self._booster.predict(matrix))
