"""What every runtime model shares: its name, version, description and schemas are known only once its
artifact is loaded, so they are instance properties (the contract allows either); one prediction is
a batch of one."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from hostd.model import MLModel


class Runtime(MLModel):
    deterministic = True

    def describe(self, name: str, version: str, description: str, input_schema: type[BaseModel],
                 output_schema: type[BaseModel], deterministic: bool = True) -> None:
        self._name, self._version, self._description = name, version, description
        # Every built-in runtime is, unless the entry says otherwise (an MLflow pyfunc that samples).
        self.deterministic = deterministic
        self._input, self._output = input_schema, output_schema
        self._outputs: TypeAdapter[list[Any]] = TypeAdapter(list[output_schema])  # type: ignore[valid-type]

    def outputs(self, rows: list[dict[str, Any]]) -> list[BaseModel]:
        """The output models of many rows, validated in one pydantic-core call."""
        return self._outputs.validate_python(rows)

    @property
    def display_name(self) -> str:  # type: ignore[override]
        return self._name

    @property
    def qualified_name(self) -> str:  # type: ignore[override]
        return self._name

    @property
    def description(self) -> str:  # type: ignore[override]
        return self._description

    @property
    def version(self) -> str:  # type: ignore[override]
        return self._version

    @property
    def input_schema(self) -> type[BaseModel]:  # type: ignore[override]
        return self._input

    @property
    def output_schema(self) -> type[BaseModel]:  # type: ignore[override]
        return self._output

    def predict(self, data: BaseModel) -> BaseModel:
        return self.predict_batch([data])[0]
