"""What every peer app shares: the row it is sent, the answer it gives, and the estimator, loaded from
the joblib file the harness wrote (IRIS_JOBLIB). The row is checked as hostd checks it (same bounds).

No `from __future__ import annotations` in these apps: FastAPI and LitServe read the annotations at
run time, and as strings a pydantic body parameter is taken for a query parameter (422s).
"""

import os
from typing import Annotated

import joblib
import numpy
from pydantic import BaseModel, Field

SepalLength = Annotated[float, Field(ge=4.0, le=8.5)]
SepalWidth = Annotated[float, Field(ge=1.5, le=5.0)]
PetalLength = Annotated[float, Field(ge=0.5, le=7.5)]
PetalWidth = Annotated[float, Field(ge=0.05, le=3.0)]


class IrisRow(BaseModel):
    sepal_length: SepalLength
    sepal_width: SepalWidth
    petal_length: PetalLength
    petal_width: PetalWidth


class IrisPrediction(BaseModel):
    species: str


def load_estimator(path: str = "") -> object:
    return joblib.load(path or os.environ["IRIS_JOBLIB"])


def species(estimator: object, features: list[float]) -> str:
    """The species ``estimator`` predicts for one row of the four measurements, in training order."""
    return str(estimator.predict(numpy.array([features], dtype=numpy.float64))[0])


def features(row: IrisRow) -> list[float]:
    return [row.sepal_length, row.sepal_width, row.petal_length, row.petal_width]
