"""More toy models for the core tests: ml_base models and decorators, closable, mis-shaped, not-a-model."""

from __future__ import annotations

from typing import Any

from ml_base import MLModel as MLBaseModel
from ml_base.decorator import MLModelDecorator as MLBaseDecorator

from hostd import MLModelDecorator
from tests.support.toy import EchoInput, EchoModel, EchoOutput


class MLBaseEcho(MLBaseModel):
    """Written against ml_base only (no hostd import needed); has a vectorised predict_batch."""

    display_name = "ml_base echo"
    qualified_name = "mlbase_echo"
    description = "Triples x"
    version = "0.2.0"
    input_schema = EchoInput
    output_schema = EchoOutput

    def __init__(self) -> None:
        self.batch_calls: list[int] = []

    def predict(self, data: EchoInput) -> EchoOutput:
        return EchoOutput(y=data.x * 3)

    def predict_batch(self, data: list[EchoInput]) -> list[EchoOutput]:
        self.batch_calls.append(len(data))
        return [EchoOutput(y=item.x * 3) for item in data]


class MLBasePlusTen(MLBaseDecorator):
    """An ml_base decorator that changes every prediction (adds ten)."""

    def predict(self, data: EchoInput) -> EchoOutput:
        result = self._model.predict(data=data)
        return EchoOutput(y=result.y + 10, text=result.text)


class TimesTen(MLModelDecorator):
    """Multiplies every prediction by ten (with PlusOne, shows the order decorators are applied in)."""

    def predict(self, data: EchoInput) -> EchoOutput:
        result = self._model.predict(data)
        return EchoOutput(y=result.y * 10, text=result.text)


class PassThrough(MLModelDecorator):
    """A decorator that does not touch predictions (say, one that only adds metadata)."""

    @property
    def description(self) -> str:
        return f"{self._model.description} (decorated)"


class ClosableEcho(EchoModel):
    def __init__(self, name: str = "echo", version: str = "1.0.0") -> None:
        super().__init__(name, version)
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class CloseFails(ClosableEcho):
    def close(self) -> None:
        super().close()
        raise OSError("disk on fire")


class ShortBatch(EchoModel):
    """Returns fewer outputs than inputs."""

    def predict_batch(self, data: list[EchoInput]) -> list[EchoOutput]:
        return []


class NotAModel:
    """Has a name and a predict, nothing else."""

    display_name = "not a model"

    def __init__(self, **configuration: Any) -> None:
        self.configuration = configuration

    def predict(self, data: Any) -> Any:
        return data


class DictSchemaModel(EchoModel):
    """Every attribute is there, but the input schema is not a pydantic model."""

    input_schema = dict  # type: ignore[assignment]


class StrictEcho(EchoModel):
    """Rejects negative x itself, the ml_base way (MLModelSchemaValidationException)."""

    def predict(self, data: EchoInput) -> EchoOutput:
        from ml_base.ml_model import MLModelSchemaValidationException

        if data.x < 0:
            raise MLModelSchemaValidationException("x must not be negative")
        return super().predict(data)
