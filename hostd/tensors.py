"""Open Inference Protocol v2 tensors <-> rows of a model's pydantic schema (any transport).

Inputs map onto the schema by field name (one tensor per field, first dimension = rows), or,
when every field is a scalar number, one ``[rows, fields]`` tensor in schema field order.
Outputs map back one tensor per output field. Strings travel as ``BYTES``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel

from hostd.errors import InvalidInput

NUMPY_TYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
NUMERIC = {name for name in NUMPY_TYPES if name != "BOOL"}
_DATATYPE_OF = {np.dtype(kind): name for name, kind in NUMPY_TYPES.items()}  # looked up per tensor
DATATYPES = {*NUMPY_TYPES, "BYTES"}
JSON_TYPES = {"number": "FP64", "integer": "INT64", "boolean": "BOOL", "string": "BYTES"}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """How one schema field travels as a tensor (shape excludes the leading row dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    as_json: bool = False  # a value tensors cannot hold natively: BYTES holding JSON text

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.shape]}


@lru_cache(maxsize=256)
def tensor_specs(schema: type[BaseModel]) -> list[TensorSpec]:
    json_schema = schema.model_json_schema()
    defs = json_schema.get("$defs", {})
    return [_spec(name, _resolve(prop, defs), defs) for name, prop in json_schema.get("properties", {}).items()]


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in prop:
        return _resolve(defs[prop["$ref"].rsplit("/", 1)[-1]], defs)
    options = [option for option in prop.get("anyOf", []) if option.get("type") != "null"]
    if len(options) == 1:  # Optional[X] travels as X
        return _resolve(options[0], defs)
    return prop


def _spec(name: str, prop: dict[str, Any], defs: dict[str, Any]) -> TensorSpec:
    shape: list[int] = []
    while prop.get("type") == "array" and "items" in prop:
        fixed = prop.get("minItems") is not None and prop.get("minItems") == prop.get("maxItems")
        shape.append(prop["minItems"] if fixed else -1)
        prop = _resolve(prop["items"], defs)
    datatype = JSON_TYPES.get(prop.get("type", ""))
    if datatype is None:
        return TensorSpec(name, "BYTES", tuple(shape), as_json=True)
    return TensorSpec(name, datatype, tuple(shape))


# -- input tensors -> rows -------------------------------------------------------------------------


def unique_names(names: Iterable[str]) -> None:
    """Refuse input tensors that share a name: a later one would silently replace an earlier one."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidInput(f"input tensor '{name}' is given twice")
        seen.add(name)


def check_datatype(name: str, datatype: Any) -> str:
    if datatype not in DATATYPES:
        raise InvalidInput(f"input '{name}': unsupported datatype {datatype!r}")
    return str(datatype)


def array_from_bytes(raw: bytes | memoryview, datatype: str) -> np.ndarray:
    """A flat array from row-major little-endian bytes (BYTES: 4-byte length, then the bytes)."""
    if datatype != "BYTES":
        return np.frombuffer(raw, dtype=np.dtype(NUMPY_TYPES[datatype]).newbyteorder("<"))
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError("truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise ValueError("truncated BYTES element")
        items.append(bytes(raw[offset + 4:offset + 4 + length]))
        offset += 4 + length
    return np.array(items, dtype=object)


def array_from_values(values: Sequence[Any], datatype: str, name: str) -> np.ndarray:
    """A flat array from a flat list of values, checked against the datatype."""
    if datatype == "BYTES":
        return np.array(values, dtype=object)
    if datatype == "BOOL":
        if not all(isinstance(value, (bool, np.bool_)) for value in values):
            raise InvalidInput(f"input '{name}' is BOOL but its data holds non-boolean values")
        return np.array(values, dtype=np.bool_)
    if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
        raise InvalidInput(f"input '{name}' is {datatype} but its data holds non-numeric values")
    try:
        return np.array(values, dtype=NUMPY_TYPES[datatype])
    except (OverflowError, ValueError):
        raise InvalidInput(f"input '{name}' holds values out of range for {datatype}") from None


def shaped(array: np.ndarray, shape: Sequence[int], name: str, datatype: str) -> np.ndarray:
    # bool is an int subclass: JSON true is no size.
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"input '{name}': the shape must be non-negative integers, got {list(shape)}")
    try:
        return array.reshape(tuple(shape))
    except ValueError:
        raise InvalidInput(f"input '{name}': {array.size} values do not fill shape {list(shape)} "
                           f"({datatype})") from None


def rows_from_arrays(arrays: dict[str, np.ndarray], specs: list[TensorSpec]) -> list[dict[str, Any]]:
    """Rows (dicts for the input schema) from named input tensors."""
    if not arrays:
        raise InvalidInput("the request has no input tensors")
    by_name = {spec.name: spec for spec in specs}
    if len(arrays) == 1 and next(iter(arrays)) not in by_name:
        return _columns_to_rows(*next(iter(arrays.items())), specs)
    unknown = sorted(set(arrays) - set(by_name))
    if unknown:
        raise InvalidInput(f"unknown input tensor(s) {', '.join(unknown)}; the model's inputs are "
                           f"{', '.join(by_name)}")
    counts = {name: (array.shape[0] if array.ndim else 1) for name, array in arrays.items()}
    if len(set(counts.values())) > 1:
        raise InvalidInput(f"input tensors disagree on the number of rows: {counts}")
    columns = {name: _column(array, by_name[name]) for name, array in arrays.items()}
    rows = next(iter(counts.values()))
    return [{name: column[i] for name, column in columns.items()} for i in range(rows)]


def _kind(datatype: str) -> str:
    """What a datatype's values are: numeric datatypes convert into each other, BOOL and BYTES into none."""
    return "number" if datatype in NUMERIC else datatype


def _sent_as(array: np.ndarray) -> str:
    if array.dtype == object:
        return "BYTES"
    return _DATATYPE_OF.get(array.dtype) or str(array.dtype)


def _not_numbers(sent: str, expected: str) -> str:
    """Why BOOL and a numeric datatype do not mix (JSON true is no number, nor 1 a boolean); '' for others."""
    if (_kind(sent), _kind(expected)) == ("BOOL", "number"):
        return " (booleans are not numbers)"
    return " (numbers are not booleans)" if (_kind(sent), _kind(expected)) == ("number", "BOOL") else ""


def _column(array: np.ndarray, spec: TensorSpec) -> list[Any]:
    """One value per row; a scalar field may come as [N] or [N, 1]."""
    if array.ndim == 0:
        array = array.reshape(1)
    sent = _sent_as(array)
    if _kind(sent) != _kind(spec.datatype):
        raise InvalidInput(f"input '{spec.name}' was sent as {sent}; the model expects {spec.datatype}"
                           + _not_numbers(sent, spec.datatype))
    if not spec.shape and array.ndim == 2 and array.shape[1] == 1:
        array = array.reshape(-1)
    _check_row_shape(array, spec)
    values = array.tolist()
    if sent == "BYTES":
        values = [_from_bytes_value(value, spec) for value in values]
    return values


def _check_row_shape(array: np.ndarray, spec: TensorSpec) -> None:
    row = array.shape[1:]
    if len(row) != len(spec.shape) or any(want not in (-1, got) for got, want in zip(row, spec.shape, strict=True)):
        expected = ", ".join(["rows", *("n" if d == -1 else str(d) for d in spec.shape)])
        raise InvalidInput(f"input '{spec.name}' has shape {list(array.shape)}; the model expects "
                           f"[{expected}]" + (" (or [rows, 1])" if not spec.shape else ""))


def _from_bytes_value(value: Any, spec: TensorSpec) -> Any:
    if isinstance(value, list):
        return [_from_bytes_value(item, spec) for item in value]
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    if spec.as_json and isinstance(text, str):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            raise InvalidInput(f"input '{spec.name}' must hold JSON text") from None
    return text


def _columns_to_rows(name: str, array: np.ndarray, specs: list[TensorSpec]) -> list[dict[str, Any]]:
    """Rows from one ``[rows, fields]`` tensor, for a model whose fields are all scalar numbers."""
    inputs = ", ".join(spec.name for spec in specs)
    if not all(not spec.shape and spec.datatype in NUMERIC for spec in specs):
        raise InvalidInput(f"unknown input tensor '{name}'; the model's inputs are {inputs}")
    sent = _sent_as(array)
    if _kind(sent) != "number":
        raise InvalidInput(f"input '{name}' was sent as {sent}; a single input tensor must be numeric"
                           f"{_not_numbers(sent, 'FP64')}, [rows, {len(specs)}] with columns {inputs} (or send "
                           "one tensor per input, named as the inputs)")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[1] != len(specs):
        raise InvalidInput(f"input '{name}' has shape {list(array.shape)}; a single input tensor must be "
                           f"[rows, {len(specs)}] with columns {', '.join(spec.name for spec in specs)}")
    names = [spec.name for spec in specs]
    return [dict(zip(names, row, strict=True)) for row in array.tolist()]


# -- rows -> output tensors ------------------------------------------------------------------------


def check_outputs(requested: Iterable[str], specs: list[TensorSpec]) -> None:
    unknown = sorted(set(requested) - {spec.name for spec in specs})
    if unknown:
        raise InvalidInput(f"unknown output(s) {', '.join(unknown)}; the model's outputs are "
                           f"{', '.join(spec.name for spec in specs)}")


def output_arrays(rows: list[dict[str, Any]], specs: list[TensorSpec],
                  requested: Iterable[str] = ()) -> list[tuple[TensorSpec, np.ndarray]]:
    """One array per output field (only the requested ones, if any), shape [rows, ...]."""
    wanted = set(requested)
    return [(spec, _to_array([row[spec.name] for row in rows], spec))
            for spec in specs if not wanted or spec.name in wanted]


def _to_array(values: list[Any], spec: TensorSpec) -> np.ndarray:
    if spec.datatype == "BYTES":
        items = [orjson.dumps(v).decode() if spec.as_json else v for v in values]
        return np.array(items, dtype=object)
    return np.array(values, dtype=NUMPY_TYPES[spec.datatype])


def array_to_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return array.astype(np.dtype(NUMPY_TYPES[datatype]).newbyteorder("<"), copy=False).tobytes()
    parts = []
    for value in array.reshape(-1).tolist():
        raw = value if isinstance(value, bytes) else str(value).encode()
        parts.append(struct.pack("<I", len(raw)) + raw)
    return b"".join(parts)
