"""The model interface (strategy): the contract of ``ml_base.MLModel`` plus optional extras.

Any object with the same shape loads, so ``ml_base.MLModel`` subclasses work unchanged
(the check is structural, not ``isinstance``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from pydantic import BaseModel

REQUIRED_ATTRIBUTES = (
    "display_name",
    "qualified_name",
    "description",
    "version",
    "input_schema",
    "output_schema",
    "predict",
)


class MLModel(ABC):
    """Base class for a model served by hostd.

    ``__init__(**configuration)`` loads the parameters. Subclasses provide the six
    properties and ``predict``; ``deterministic`` and ``predict_batch`` are optional.
    """

    #: False if the same input can give different outputs (never cached; published in metadata).
    deterministic: bool = True

    @property
    @abstractmethod
    def display_name(self) -> str: ...

    @property
    @abstractmethod
    def qualified_name(self) -> str: ...

    @property
    @abstractmethod
    def description(self) -> str: ...

    @property
    @abstractmethod
    def version(self) -> str: ...

    @property
    @abstractmethod
    def input_schema(self) -> type[BaseModel]: ...

    @property
    @abstractmethod
    def output_schema(self) -> type[BaseModel]: ...

    @abstractmethod
    def predict(self, data: Any) -> Any:
        """Predict for one input (an instance of ``input_schema``)."""

    def predict_batch(self, data: list[Any]) -> list[Any]:
        """Predict for many inputs; override with a vectorised version where it pays."""
        return [self.predict(item) for item in data]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.qualified_name!r}, {self.version!r})"


class MLModelDecorator(MLModel):
    """Wraps a model to add behaviour around it (caching, logging, enrichment).

    Same contract as ``ml_base.decorator.MLModelDecorator``: ``__init__(model=None, **configuration)``
    and ``set_model(model)``. Everything a subclass does not override is forwarded to the model.
    """

    def __init__(self, model: Any = None, **configuration: Any) -> None:
        self._model = model
        self._configuration = configuration

    def set_model(self, model: Any) -> MLModelDecorator:
        self._model = model
        return self

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the decorator does not define itself.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._model, name)

    @property
    def display_name(self) -> str:
        return self._model.display_name  # type: ignore[no-any-return]

    @property
    def qualified_name(self) -> str:
        return self._model.qualified_name  # type: ignore[no-any-return]

    @property
    def description(self) -> str:
        return self._model.description  # type: ignore[no-any-return]

    @property
    def version(self) -> str:
        return self._model.version  # type: ignore[no-any-return]

    @property
    def input_schema(self) -> type[BaseModel]:
        return self._model.input_schema  # type: ignore[no-any-return]

    @property
    def output_schema(self) -> type[BaseModel]:
        return self._model.output_schema  # type: ignore[no-any-return]

    @property
    def deterministic(self) -> bool:  # type: ignore[override]
        return getattr(self._model, "deterministic", True)

    def predict(self, data: Any) -> Any:
        return self._model.predict(data)

    def predict_batch(self, data: list[Any]) -> list[Any]:
        # A decorator that overrides predict() must see every item; one that does not
        # keeps the wrapped model's vectorised path.
        if type(self).predict is not MLModelDecorator.predict:
            return [self.predict(item) for item in data]
        return batch_function(self._model)(data)


def check_model(model: Any) -> None:
    """Raise ``TypeError`` naming what is missing if ``model`` does not fit the contract."""
    missing = [name for name in REQUIRED_ATTRIBUTES if not hasattr(model, name)]
    if missing:
        raise TypeError(f"{type(model).__name__} is not a model: missing {', '.join(missing)}")
    for name in ("input_schema", "output_schema"):
        schema = getattr(model, name)
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise TypeError(f"{type(model).__name__}.{name} must be a pydantic model class, got {schema!r}")
    if not callable(model.predict):
        raise TypeError(f"{type(model).__name__}.predict is not callable")


def batch_function(model: Any) -> Any:
    """The callable that predicts a list of inputs for ``model``.

    Uses ``predict_batch`` only when the model's class defines it: ml_base decorators forward
    unknown attributes to the wrapped model, and using that would skip the decorator.
    """
    if getattr(type(model), "predict_batch", None) is not None:
        return model.predict_batch
    predict = model.predict
    return lambda items: [predict(item) for item in items]


def is_deterministic(model: Any) -> bool:
    return bool(getattr(model, "deterministic", True))
