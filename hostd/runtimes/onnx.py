"""An ONNX graph served with onnxruntime (``pip install 'hostd[onnx]'``).

    - class_path: hostd.runtimes.onnx:OnnxModel
      configuration:
        uri: models/flowers.onnx
        features: [sepal_length, sepal_width, petal_length, petal_width]   # default: f0..fN-1
        probabilities: true          # the graph's second output: a map per row (skl2onnx's ZipMap) or a
        classes: [a, b, c]           # [rows, classes] tensor, whose columns ``classes`` names

The graph's inputs give the schema: one [rows, N] input is N features; several [rows] or [rows, 1]
inputs are one feature each, named as the inputs are. Its first output is the prediction: text or
integer labels (a classifier) or numbers (a regressor).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hostd.runtimes.artifact import ArtifactError, fetch
from hostd.runtimes.tabular import TabularModel, feature_list

DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32}
LABELS = {"tensor(string)": str, "tensor(int64)": int, "tensor(int32)": int}


class OnnxModel(TabularModel):
    def __init__(self, uri: str, name: str | None = None, version: str = "1.0.0", sha256: str | None = None,
                 features: list[str] | None = None, probabilities: bool = False, classes: list[Any] | None = None,
                 description: str | None = None,
                 storage_options: dict[str, Any] | None = None, deterministic: bool = True) -> None:
        import onnxruntime

        path = fetch(uri, sha256, storage_options)
        try:
            self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ArtifactError(f"{uri} is not an ONNX model onnxruntime can load ({str(exc).splitlines()[0]})") \
                from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        dtypes = {DTYPES.get(graph_input.type) for graph_input in inputs}
        if None in dtypes or len(dtypes) != 1:
            raise ArtifactError(f"{uri}: its inputs are {[i.type for i in inputs]}; hostd serves graphs whose "
                                "inputs are all float, double or integer tensors of one type")
        self._split = len(inputs) > 1  # one input per feature
        if self._split:
            columns = feature_list(len(inputs), [graph_input.name for graph_input in inputs], features, uri)
        else:
            width = inputs[0].shape[-1] if len(inputs[0].shape) == 2 else None
            columns = feature_list(width if isinstance(width, int) else None, None, features, uri)
        self._names = [graph_input.name for graph_input in inputs]
        self._column_shapes = [len(graph_input.shape) for graph_input in inputs]  # [rows] or [rows, 1] each
        label = LABELS.get(outputs[0].type)
        if probabilities and (label is None or len(outputs) < 2):
            raise ArtifactError(f"{uri}: probabilities: true, but the graph is not a classifier with a "
                                "probability output; remove the option")
        dtype = dtypes.pop()
        if probabilities and classes is None:
            classes = self._probe_classes(uri, len(columns), dtype)
        super().__init__(uri=uri, name=name or path.stem, version=version, features=columns, classes=classes,
                         probabilities=probabilities, label=label, dtype=dtype,
                         description=description or f"ONNX graph from {path.name}", deterministic=deterministic)

    def _probe_classes(self, uri: str, width: int, dtype: Any) -> list[Any]:
        """The class names a map-valued probability output uses, from one prediction on zeros."""
        probabilities = self._session.run(None, self._feed(np.zeros((1, width), dtype=dtype)))[1]
        if isinstance(probabilities, list) and probabilities and isinstance(probabilities[0], dict):
            return list(probabilities[0])
        raise ArtifactError(f"{uri}: the probability output is a tensor, whose columns the graph does not name; "
                            "list the classes in order as classes: [...]")

    def _feed(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        if not self._split:
            return {self._names[0]: matrix}
        return {name: matrix[:, index] if rank == 1 else matrix[:, [index]]
                for index, (name, rank) in enumerate(zip(self._names, self._column_shapes, strict=True))}

    def predict_rows(self, matrix: np.ndarray) -> tuple[list[Any], list[list[float]] | None]:
        results = self._session.run(None, self._feed(matrix))
        labels = np.asarray(results[0]).reshape(len(matrix)).tolist()
        if not self._probabilities:
            return labels, None
        scores = results[1]
        if isinstance(scores, list):  # a map per row (ZipMap)
            return labels, [[row[label] for label in self._classes or []] for row in scores]
        return labels, np.asarray(scores).tolist()

    def predict_matrix(self, matrix: np.ndarray) -> list[Any]:
        return self.predict_rows(matrix)[0]
