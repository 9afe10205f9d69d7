"""An MLflow model directory (the ``MLmodel`` file), served through its pyfunc flavour
(``pip install 'hostd[mlflow]'``).

    - class_path: hostd.runtimes.mlflow:MlflowModel
      configuration:
        uri: models/flowers              # the directory mlflow.<flavour>.save_model wrote (or s3://...)
        trust: true                      # required: see below
        name: flowers                    # default: the directory's name

The model's signature gives the schemas: each input column a field of its type (double, float, long,
integer, boolean, string), and the output's type that of ``prediction``. A model logged without a
signature is refused: log it with one (``mlflow.models.infer_signature``).

Loading an MLflow model runs Python code the directory names (its flavour's loader, and for most
flavours a pickle), so hostd loads one only when the entry says ``trust: true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from hostd.runtimes.artifact import ArtifactError, fetch
from hostd.runtimes.runtime import Runtime
from hostd.runtimes.schemas import input_schema, output_schema

#: MLflow's column types as Python types.
TYPES = {"double": float, "float": float, "long": int, "integer": int, "boolean": bool, "string": str}


class MlflowModel(Runtime):

    def __init__(self, uri: str, trust: bool = False, name: str | None = None, version: str = "1.0.0",
                 description: str | None = None, storage_options: dict[str, Any] | None = None,
                 deterministic: bool = True) -> None:
        if not trust:
            raise ArtifactError(f"{uri}: loading an MLflow model runs the Python code it names (its loader, "
                                "usually a pickle); hostd loads one only with trust: true in the entry's "
                                "configuration")
        path = fetch(uri, None, storage_options)
        if not (path / "MLmodel").is_file():
            raise ArtifactError(f"{uri} is not an MLflow model directory (it has no MLmodel file); give the "
                                "directory mlflow.<flavour>.save_model wrote")
        import mlflow.pyfunc

        try:
            self._model = mlflow.pyfunc.load_model(str(path))
        except Exception as exc:
            raise ArtifactError(f"{uri}: MLflow could not load it ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        signature = self._model.metadata.signature
        if signature is None or not signature.inputs.has_input_names():
            raise ArtifactError(f"{uri} has no signature naming its input columns; log the model with one "
                                "(mlflow.models.infer_signature(X, model.predict(X)))")
        columns = signature.inputs.inputs
        self._columns = [column.name for column in columns]
        unknown = sorted({str(_type_name(column)) for column in columns} - set(TYPES))
        if unknown:
            raise ArtifactError(f"{uri}: input columns of type {', '.join(unknown)} are not served; hostd takes "
                                f"{', '.join(TYPES)}")
        name = name or path.name
        self.describe(name, version, description or f"MLflow model from {Path(uri).name}",
                      input_schema(name, self._columns, [TYPES[_type_name(column)] for column in columns]),
                      output_schema(name, _output_type(signature), None, probabilities=False), deterministic)

    def predict_batch(self, data: list[BaseModel]) -> list[BaseModel]:
        if not data:
            return []
        import pandas

        frame = pandas.DataFrame([row.model_dump(by_alias=True) for row in data], columns=self._columns)
        predictions = np.asarray(self._model.predict(frame))  # an array, a Series or a one-column frame
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        return self.outputs([{"prediction": value} for value in predictions.tolist()])


def _type_name(column: Any) -> str:
    return str(getattr(column.type, "name", column.type))


def _output_type(signature: Any) -> type:
    """``prediction``'s type from the signature's first output: a column's type, or a tensor's numpy
    dtype (text, whole numbers, booleans, else numbers)."""
    outputs = signature.outputs.inputs if signature.outputs is not None else []
    if not outputs:
        return float
    kind = getattr(outputs[0].type, "kind", None)  # a TensorSpec's type is a numpy dtype
    if kind is None:
        return TYPES.get(_type_name(outputs[0]), float)
    return {"U": str, "S": str, "O": str, "i": int, "u": int, "b": bool}.get(kind, float)
