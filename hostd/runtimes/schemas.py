"""Input and output schemas generated from what an artifact knows about itself.

The classes are real pydantic models. Each is registered here under a name derived from the model's
name, so it pickles by reference (process workers send inputs and outputs across processes): a
worker that loads the same model makes the same classes under the same names.
"""

from __future__ import annotations

import keyword
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

_REGISTERED: dict[str, type[BaseModel]] = {}


def input_schema(model: str, features: list[str], kind: type | list[type] = float) -> type[BaseModel]:
    """One required field per feature, in the artifact's feature order, of type ``kind`` (one for all,
    or one per feature); a feature name that is not a Python identifier (``sepal length (cm)``) becomes
    a field name (``sepal_length_cm``) with the original as its alias, and either is accepted."""
    fields = _fields(features, kind)
    config = ConfigDict(extra="forbid", populate_by_name=True)
    return _register(f"{_stem(model)}Input", create_model(f"{_stem(model)}Input", __config__=config,
                                                          __module__=__name__, **fields))


def output_schema(model: str, label: type, classes: list[Any] | None, probabilities: bool) -> type[BaseModel]:
    """``prediction`` (one of ``classes`` when the artifact knows them), and with ``probabilities`` each
    class's probability: a nested model with a field per class (its name as the alias where it is no
    identifier), so OpenAPI names the classes and the typed gRPC service can express it."""
    fields: dict[str, Any] = {"prediction": (label, ...)}
    if probabilities:
        per_class = _fields([str(each) for each in classes or []], float)
        name = f"{_stem(model)}Probabilities"
        fields["probabilities"] = (_register(name, create_model(name, __config__=ConfigDict(populate_by_name=True),
                                                                __module__=__name__, **per_class)), ...)
    return _register(f"{_stem(model)}Output", create_model(f"{_stem(model)}Output", __module__=__name__, **fields))


def _fields(names: list[str], kind: type | list[type]) -> dict[str, Any]:
    """A required field per name, of type ``kind`` (one, or one per name); a name that is no
    identifier becomes one, with the original as its alias."""
    kinds = kind if isinstance(kind, list) else [kind] * len(names)
    fields: dict[str, Any] = {}
    for original, each in zip(names, kinds, strict=True):
        name = field_name(original)
        if name in fields:
            raise ValueError(f"'{original}' and another name both map to the field name '{name}'")
        fields[name] = (each, Field(alias=original)) if name != original else (each, ...)
    return fields


def field_name(feature: str) -> str:
    name = re.sub(r"\W+", "_", feature).strip("_") or "feature"
    if name[0].isdigit() or keyword.iskeyword(name):
        name = f"f_{name}"
    return name


def _stem(model: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"\W+|_", model) if part) or "Model"


def _register(name: str, schema: type[BaseModel]) -> type[BaseModel]:
    _REGISTERED[name] = schema
    return schema


def __getattr__(name: str) -> type[BaseModel]:  # pickle finds generated classes here
    try:
        return _REGISTERED[name]
    except KeyError:
        raise AttributeError(name) from None
