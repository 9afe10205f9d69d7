"""Toy models for the HTTP tests: a tensor-shaped model, CPU-bound models, and ml_base code."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import ml_base
from ml_base.decorator import MLModelDecorator as MLBaseDecorator
from pydantic import BaseModel, Field

from hostd import MLModel
from tests.support.toy import EchoInput, EchoModel, EchoOutput, GatedInput


class Colour(str, Enum):
    red = "red"
    green = "green"


class GridInput(BaseModel):
    """One field of every kind a v2 tensor carries: FP64, INT64, BOOL, BYTES, a fixed [2, 3] grid."""

    scale: float
    count: int = Field(ge=0, le=100)
    flag: bool
    label: str
    colour: Colour
    grid: list[Annotated[list[float], Field(min_length=3, max_length=3)]] = Field(min_length=2, max_length=2)


class GridOutput(BaseModel):
    total: float
    count: int
    flag: bool
    label: str
    colour: Colour


class GridModel(MLModel):
    """total = scale * sum(grid); echoes the other fields (label upper-cased, flag negated)."""

    display_name = "Grid"
    description = "Sums a 2x3 grid"
    qualified_name = "grid"
    version = "1.0.0"
    input_schema = GridInput
    output_schema = GridOutput

    def predict(self, data: GridInput) -> GridOutput:
        total = data.scale * sum(sum(row) for row in data.grid)
        return GridOutput(total=total, count=data.count, flag=not data.flag, label=data.label.upper(),
                          colour=data.colour)


class SpinModel(EchoModel):
    """Like EchoModel, but burns CPU in pure Python for delay_ms (holding the GIL) instead of sleeping."""

    def predict(self, data: EchoInput) -> EchoOutput:
        deadline = time.perf_counter() + data.delay_ms / 1000
        spins = 0
        while time.perf_counter() < deadline:
            spins += 1
        return EchoOutput(y=data.x * self.factor, text=str(spins > 0))


class GatedSpin(SpinModel):
    """SpinModel that burns CPU until the file ``gate`` exists (looking for it every ~10k spins, so
    the call is pure-Python work nearly all the time), for at most 30 s."""

    input_schema = GatedInput

    def predict(self, data: GatedInput) -> EchoOutput:  # type: ignore[override]
        deadline = time.perf_counter() + 30
        spins = 0
        while not (spins % 10_000 == 0 and Path(data.gate).exists()):
            spins += 1
            if time.perf_counter() > deadline:
                raise RuntimeError(f"gate {data.gate} was not opened within 30 s")
        return EchoOutput(y=data.x * self.factor, text=str(spins > 0))


# -- written against ml_base only (the published contract), as the series' models were ------------


class GreetInput(BaseModel):
    name: str = Field(min_length=1, max_length=50)


class GreetOutput(BaseModel):
    greeting: str


class GreetModel(ml_base.MLModel):
    """An ml_base.MLModel subclass: greets by name."""

    def __init__(self, greeting: str = "Hello") -> None:
        self._greeting = greeting

    @property
    def display_name(self) -> str:
        return "Greeter"

    @property
    def qualified_name(self) -> str:
        return "greeter"

    @property
    def description(self) -> str:
        return "Greets by name"

    @property
    def version(self) -> str:
        return "0.3.1"

    @property
    def input_schema(self) -> type[BaseModel]:
        return GreetInput

    @property
    def output_schema(self) -> type[BaseModel]:
        return GreetOutput

    def predict(self, data: GreetInput) -> GreetOutput:
        return GreetOutput(greeting=f"{self._greeting}, {data.name}")


class Exclaim(MLBaseDecorator):
    """An ml_base decorator: appends ``suffix`` (configuration) to the greeting."""

    def predict(self, data: GreetInput) -> GreetOutput:
        result = self._model.predict(data=data)
        return GreetOutput(greeting=result.greeting + self._configuration.get("suffix", "!"))
