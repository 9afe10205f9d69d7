"""Input and output of the iris model."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic takes true as 1.0; the schema says number
        raise ValueError("must be a number, not a boolean")
    return value


#: A number, not a boolean. Not StrictFloat: that also refuses "5.1", the text a CSV cell holds in `hostd batch`.
Number = Annotated[float, BeforeValidator(_not_a_boolean)]


class IrisModelInput(BaseModel):
    """Four flower measurements in centimetres, in the order the model was trained on."""

    model_config = ConfigDict(extra="forbid")

    # Bounds hold every flower in the training data (4.3-7.9, 2.0-4.4, 1.0-6.9, 0.1-2.5) with a margin.
    sepal_length: Number = Field(ge=4.0, le=8.5, description="Length of the sepal in centimetres.")
    sepal_width: Number = Field(ge=1.5, le=5.0, description="Width of the sepal in centimetres.")
    petal_length: Number = Field(ge=0.5, le=7.5, description="Length of the petal in centimetres.")
    petal_width: Number = Field(ge=0.05, le=3.0, description="Width of the petal in centimetres.")


class Species(StrEnum):
    """Iris species the model can predict."""

    setosa = "Iris setosa"
    versicolor = "Iris versicolor"
    virginica = "Iris virginica"


class IrisModelOutput(BaseModel):
    """The predicted species."""

    species: Species = Field(description="Predicted species of the iris.")
