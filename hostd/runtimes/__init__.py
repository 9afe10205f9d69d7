"""Built-in model classes that serve a model file with no code (issue 17).

Each runtime is an ordinary strategy implementing the model contract (hostd.model): a host.yaml
entry names it as its ``class_path`` and gives the file in ``configuration``::

    - class_path: hostd.runtimes.sklearn:SklearnModel
      configuration: {uri: models/iris.skops, name: iris}

or, shorter, names only the file (the runtime is chosen by its extension, ``runtime_for``)::

    - uri: models/iris.skops
      configuration: {name: iris}

Its schemas are pydantic models generated from what the artifact knows (feature names, classes), so
validation, metadata, OpenAPI, OIP v2 tensors, the typed gRPC services and ``hostd batch`` treat it
exactly as a hand-written model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SKLEARN = "hostd.runtimes.sklearn:SklearnModel"
XGBOOST = "hostd.runtimes.boosters:XGBoostModel"
LIGHTGBM = "hostd.runtimes.boosters:LightGBMModel"
ONNX = "hostd.runtimes.onnx:OnnxModel"
MLFLOW = "hostd.runtimes.mlflow:MlflowModel"
#: Which runtime serves a file, by its extension.
BY_EXTENSION = {".skops": SKLEARN, ".joblib": SKLEARN, ".pkl": SKLEARN, ".pickle": SKLEARN, ".json": XGBOOST,
                ".ubj": XGBOOST, ".txt": LIGHTGBM, ".onnx": ONNX}


def runtime_for(uri: str) -> str | None:
    """The class path of the runtime that serves ``uri``: by its extension, or MLflow for a local
    directory holding an MLmodel file (a remote MLflow model needs the class path written out)."""
    if urlsplit(uri).scheme in ("", "file") and (Path(uri.removeprefix("file://")) / "MLmodel").is_file():
        return MLFLOW
    return BY_EXTENSION.get(Path(urlsplit(uri).path).suffix)


def expand_uri(data: Any) -> Any:
    """A model entry with ``uri`` instead of ``class_path``: the runtime that serves it, with the uri in its
    configuration (ModelSettings validates entries through this)."""
    if not isinstance(data, dict) or "uri" not in data:
        return data
    if "class_path" in data:
        raise ValueError("give uri or class_path, not both (a uri for a class goes in its configuration)")
    data = dict(data)
    uri = data.pop("uri")
    runtime = runtime_for(str(uri))
    if runtime is None:
        raise ValueError(f"no built-in runtime serves {uri!r} (by its extension: {', '.join(BY_EXTENSION)}, or an "
                         "MLflow model directory); name one with class_path and put the uri in its configuration")
    return {**data, "class_path": runtime, "configuration": {"uri": uri, **(data.get("configuration") or {})}}
