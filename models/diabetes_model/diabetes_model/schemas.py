"""Input and output of the diabetes model.

The inputs are the ten baseline variables of Efron et al. (2004), in raw units
(``load_diabetes(scaled=False)``). Bounds hold all 442 training patients with a margin;
inputs near the bounds are extrapolation.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic takes true as 1.0; the schema says number
        raise ValueError("must be a number, not a boolean")
    return value


#: A number, not a boolean. Not StrictFloat: that also refuses "59", the text a CSV cell holds in `hostd batch`.
Number = Annotated[float, BeforeValidator(_not_a_boolean)]


class DiabetesModelInput(BaseModel):
    """Baseline measurements of one diabetes patient, in the order the model was trained on."""

    model_config = ConfigDict(extra="forbid")

    # Ranges in brackets are those of the training data.
    age: Number = Field(ge=18, le=85, description="Age in years [19, 79].")
    # An enum in the JSON schema, not Literal[1, 2]: that would make the field an integer, so an INT64
    # tensor in OIP v2 and an int64 in the typed gRPC service, and the data set codes it 1.0 and 2.0.
    sex: Number = Field(description="Sex, coded 1 or 2 (the source does not say which is which).",
                        json_schema_extra={"enum": [1, 2]})
    bmi: Number = Field(ge=15, le=50, description="Body mass index in kg/m² [18, 42.2].")
    bp: Number = Field(ge=50, le=160, description="Average blood pressure in mm Hg [62, 133].")
    s1: Number = Field(ge=80, le=350, description="tc: total serum cholesterol in mg/dL [97, 301].")
    s2: Number = Field(ge=30, le=280, description="ldl: low-density lipoproteins in mg/dL [41.6, 242.4].")
    s3: Number = Field(ge=15, le=120, description="hdl: high-density lipoproteins in mg/dL [22, 99].")
    s4: Number = Field(ge=1, le=12, description="tch: total cholesterol / HDL ratio [2, 9.09].")
    s5: Number = Field(ge=3, le=6.5, description="ltg: log of serum triglycerides level [3.26, 6.11].")
    s6: Number = Field(ge=50, le=150, description="glu: blood sugar level in mg/dL [58, 124].")

    @field_validator("sex")
    @classmethod
    def _sex_is_a_code(cls, value: float) -> float:
        if value not in (1, 2):
            raise ValueError("sex must be coded 1 or 2")
        return value


class DiabetesModelOutput(BaseModel):
    """The predictive distribution of disease progression one year after baseline, and one draw from it."""

    progression: float = Field(
        description="Predicted mean disease progression one year after baseline (25 to 346 in training)."
    )
    std: float = Field(ge=0.0, description="Standard deviation of the predictive distribution (normal).")
    sample: float = Field(description="One random draw from the predictive distribution N(progression, std).")
