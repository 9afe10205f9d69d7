"""Toy models for the gRPC tests: schemas that exercise the typed per-model messages.

``ProfileModel`` uses every shape protobuf can express (nested models, an enum, lists, optional
fields, a list of lists); ``CubeModel`` nests lists three deep; the ``Untypeable*`` models each
use one type protobuf cannot express, so ``describe`` must refuse them (and the OIP v2 service
still serves them).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from hostd import MLModel


class Kind(str, Enum):
    person = "person"
    company = "company"


class Address(BaseModel):
    street: str
    number: int


class ProfileInput(BaseModel):
    name: str
    kind: Kind
    age: int | None = None
    score: float | None = None
    active: bool = True
    tags: list[str] = Field(default_factory=list)
    address: Address | None = None
    previous: list[Address] = Field(default_factory=list)
    matrix: list[list[float]] = Field(default_factory=list)


class ProfileOutput(BaseModel):
    summary: str
    kind: Kind
    age: int | None = None
    tags: list[str]
    address: Address | None = None
    row_sums: list[float]


class SchemaModel(MLModel):
    """A model whose name, schemas and predict are class attributes (for schema-shaped tests)."""

    display_name = "schema toy"
    description = "A toy with an interesting schema"
    qualified_name = "schema"
    version = "1.0.0"
    input_schema: type[BaseModel] = ProfileInput
    output_schema: type[BaseModel] = ProfileOutput

    def __init__(self, **configuration: Any) -> None:
        self.configuration = configuration

    def predict(self, data: Any) -> Any:
        raise NotImplementedError


class ProfileModel(SchemaModel):
    """Summarises a profile: echoes kind, age, tags (upper-cased) and address; sums each matrix row."""

    qualified_name = "profile"

    def predict(self, data: ProfileInput) -> ProfileOutput:
        where = f" at {data.address.number} {data.address.street}" if data.address else ""
        return ProfileOutput(summary=f"{data.name} ({data.kind.value}){where}, {len(data.previous)} previous",
                             kind=data.kind, age=data.age, tags=[tag.upper() for tag in data.tags],
                             address=data.address, row_sums=[sum(row) for row in data.matrix])


class CubeInput(BaseModel):
    cube: list[list[list[int]]]


class CubeOutput(BaseModel):
    total: int
    depth: int


class CubeModel(SchemaModel):
    """Sums a 3-D list of integers (say, channels x rows x columns of an image)."""

    qualified_name = "cube"
    input_schema = CubeInput
    output_schema = CubeOutput

    def predict(self, data: CubeInput) -> CubeOutput:
        return CubeOutput(total=sum(v for plane in data.cube for row in plane for v in row), depth=len(data.cube))


class AliasOutput(BaseModel):
    species_name: str = Field(alias="speciesName")


class AliasInput(BaseModel):
    petal_length: float = Field(alias="petalLength")


class AliasModel(SchemaModel):
    """camelCase field names through pydantic aliases (valid protobuf identifiers)."""

    qualified_name = "alias"
    input_schema = AliasInput
    output_schema = AliasOutput

    def predict(self, data: AliasInput) -> AliasOutput:
        return AliasOutput(speciesName=f"long {data.petal_length}")


# -- schemas protobuf cannot express ------------------------------------------------------------------


class UnionInput(BaseModel):
    x: float
    value: int | str


class DictInput(BaseModel):
    x: float
    weights: dict[str, float]


class AnyInput(BaseModel):
    x: float
    payload: Any


class DashedInput(BaseModel):
    sepal_length: float = Field(alias="sepal-length")


class SimpleOutput(BaseModel):
    y: float


class UntypeableUnion(SchemaModel):
    qualified_name = "union_model"
    input_schema = UnionInput
    output_schema = SimpleOutput


class UntypeableDict(SchemaModel):
    """Sums its weights times x; served by OIP v2 (weights as JSON in BYTES), but has no typed service."""

    qualified_name = "dict_model"
    input_schema = DictInput
    output_schema = SimpleOutput

    def predict(self, data: DictInput) -> SimpleOutput:
        return SimpleOutput(y=data.x * sum(data.weights.values()))


class UntypeableAny(SchemaModel):
    qualified_name = "any_model"
    input_schema = AnyInput
    output_schema = SimpleOutput


class UntypeableDashed(SchemaModel):
    qualified_name = "dashed_model"
    input_schema = DashedInput
    output_schema = SimpleOutput
