"""Input and output of the digits model."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _a_number(value: Any) -> Any:
    # pydantic alone would take false as 0 and "3" as 3, which the schema (an integer) does not allow.
    # Not StrictInt: that refuses 3.0, which JSON Schema's integer includes (and an FP32 tensor holds).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a whole number")
    return value


#: One pixel: 0 (white) to 16 (black), as in scikit-learn's digits dataset.
Pixel = Annotated[int, Field(ge=0, le=16), BeforeValidator(_a_number)]
Row = Annotated[list[Pixel], Field(min_length=8, max_length=8)]
Image = Annotated[list[Row], Field(min_length=8, max_length=8)]


class DigitsModelInput(BaseModel):
    """An 8x8 grey-scale image of one handwritten digit."""

    model_config = ConfigDict(extra="forbid")

    image: Image = Field(description="8 rows of 8 pixels, top row first; each pixel 0 (white) to 16 (black).")


class DigitsModelOutput(BaseModel):
    """The predicted digit and the model's confidence in it."""

    digit: int = Field(ge=0, le=9, description="Predicted digit.")
    probability: float = Field(ge=0.0, le=1.0, description="Estimated probability of the predicted digit.")
