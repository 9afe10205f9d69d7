"""A model for process workers: reports the process that ran it, and can kill that process."""

from __future__ import annotations

import os

from pydantic import BaseModel

from hostd import MLModel


class PidInput(BaseModel):
    x: float
    crash: bool = False


class PidOutput(BaseModel):
    y: float
    pid: int


class PidModel(MLModel):
    display_name = "Pid"
    qualified_name = "pid"
    description = "Doubles x and says which process did it"
    version = "1.0.0"
    input_schema = PidInput
    output_schema = PidOutput

    def __init__(self) -> None:
        pass

    def predict(self, data: PidInput) -> PidOutput:
        if data.crash:
            os._exit(3)  # a crash that no exception handler can catch
        return PidOutput(y=data.x * 2, pid=os.getpid())
