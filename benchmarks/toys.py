"""Models for the scenario benchmarks: one that holds the GIL while it works (pure Python), one
that waits with the GIL released (like a model whose work runs in C)."""

from __future__ import annotations

import time

from pydantic import BaseModel

from hostd import MLModel


class Work(BaseModel):
    n: int = 30_000  # loop iterations: ~2 ms of pure-Python work on this machine


class Done(BaseModel):
    total: int


class GilBoundModel(MLModel):
    display_name = "GIL-bound"
    qualified_name = "gil_bound"
    description = "Sums squares in a Python loop (holds the GIL)"
    version = "1.0.0"
    input_schema = Work
    output_schema = Done

    def predict(self, data: Work) -> Done:
        return Done(total=sum(i * i for i in range(data.n)))


class Wait(BaseModel):
    ms: float = 2.0


class Waited(BaseModel):
    ms: float


class SleepyModel(MLModel):
    display_name = "Sleepy"
    qualified_name = "sleepy"
    description = "Sleeps ms milliseconds per call, GIL released"
    version = "1.0.0"
    input_schema = Wait
    output_schema = Waited

    def predict(self, data: Wait) -> Waited:
        time.sleep(data.ms / 1000)
        return Waited(ms=data.ms)


class NamedIris:
    """The iris model under a name of the config's choosing: many entries of one model (startup benchmark)."""

    def __new__(cls, name: str) -> object:
        from iris_model.model import IrisModel

        model = IrisModel()
        model.qualified_name = name  # an instance attribute over the class's
        return model
