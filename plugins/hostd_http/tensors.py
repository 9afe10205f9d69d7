"""Open Inference Protocol v2 tensors <-> rows of a model's pydantic schema.

Inputs map onto the schema by field name (one tensor per field, first dimension = rows), or,
when every field is a scalar number, one ``[rows, fields]`` tensor in schema field order.
Outputs map back one tensor per output field. Strings travel as ``BYTES``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
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


# -- decoding a request ----------------------------------------------------------------------------


def decode_inputs(request: dict[str, Any], binary: memoryview, specs: list[TensorSpec]) -> list[dict[str, Any]]:
    """Rows (dicts for the input schema) from a v2 infer request and its binary tail."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("request has no 'inputs' (a list of tensors)")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in inputs:
        name, array, offset = _decode_tensor(tensor, binary, offset)
        arrays[name] = array
    if offset != len(binary):
        raise InvalidInput(f"binary data is {len(binary)} bytes but the inputs declare {offset}")
    by_name = {spec.name: spec for spec in specs}
    if len(arrays) == 1 and next(iter(arrays)) not in by_name:
        return _columns_to_rows(next(iter(arrays.items())), specs)
    unknown = sorted(set(arrays) - set(by_name))
    if unknown:
        raise InvalidInput(f"unknown input tensor(s) {', '.join(unknown)}; the model's inputs are "
                           f"{', '.join(by_name)}")
    return _fields_to_rows(arrays, by_name)


def _decode_tensor(tensor: Any, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise InvalidInput("every input tensor needs a 'name', a 'datatype', a 'shape' and 'data'")
    name, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
    if datatype not in NUMPY_TYPES and datatype != "BYTES":
        raise InvalidInput(f"input '{name}': unsupported datatype {datatype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    try:
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidInput(f"input '{name}': binary_data_size {size} runs past the end of the body")
            array = _from_bytes(binary[offset:offset + size], datatype)
            offset += size
        else:
            array = _from_json(tensor.get("data"), datatype, name)
        return name, array.reshape(shape), offset
    except ValueError as exc:
        raise InvalidInput(f"input '{name}': data does not match shape {shape} and datatype {datatype}: "
                           f"{exc}") from None


def _from_bytes(raw: memoryview, datatype: str) -> np.ndarray:
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


def _from_json(data: Any, datatype: str, name: str) -> np.ndarray:
    if data is None:
        raise InvalidInput(f"input '{name}' has no 'data' (nor binary_data_size)")
    if datatype == "BYTES":
        return np.array(_flatten(data), dtype=object)
    if datatype == "BOOL":
        values = _flatten(data)
        if not all(isinstance(value, bool) for value in values):
            raise InvalidInput(f"input '{name}' is BOOL but its data holds non-boolean values")
        return np.array(values, dtype=np.bool_)
    values = _flatten(data)
    if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
        raise InvalidInput(f"input '{name}' is {datatype} but its data holds non-numeric values")
    return np.array(values, dtype=NUMPY_TYPES[datatype])


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _fields_to_rows(arrays: dict[str, np.ndarray], specs: dict[str, TensorSpec]) -> list[dict[str, Any]]:
    counts = {name: (array.shape[0] if array.ndim else 1) for name, array in arrays.items()}
    if len(set(counts.values())) > 1:
        raise InvalidInput(f"input tensors disagree on the number of rows: {counts}")
    columns = {name: _column(array, specs[name]) for name, array in arrays.items()}
    rows = next(iter(counts.values()))
    return [{name: column[i] for name, column in columns.items()} for i in range(rows)]


def _column(array: np.ndarray, spec: TensorSpec) -> list[Any]:
    """One value per row; a scalar field may come as [N] or [N, 1]."""
    if array.ndim == 0:
        array = array.reshape(1)
    _check_datatype(array, spec)
    if not spec.shape and array.ndim == 2 and array.shape[1] == 1:
        array = array.reshape(-1)
    values = array.tolist()
    if array.dtype == object:
        values = [_from_bytes_value(value, spec) for value in values]
    return values


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


def _check_datatype(array: np.ndarray, spec: TensorSpec) -> None:
    is_bytes = array.dtype == object
    wanted = spec.datatype
    ok = (wanted == "BYTES" and is_bytes) or (wanted != "BYTES" and not is_bytes)
    if not ok:
        kind = "BYTES" if is_bytes else "a numeric/BOOL type"
        raise InvalidInput(f"input '{spec.name}' was sent as {kind}; the model expects {wanted}")


def _columns_to_rows(item: tuple[str, np.ndarray], specs: list[TensorSpec]) -> list[dict[str, Any]]:
    name, array = item
    scalar_numbers = all(not spec.shape and spec.datatype in NUMERIC for spec in specs)
    if not scalar_numbers or array.dtype == object:
        raise InvalidInput(f"unknown input tensor '{name}'; the model's inputs are "
                           f"{', '.join(spec.name for spec in specs)}")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[1] != len(specs):
        raise InvalidInput(f"input '{name}' has shape {list(array.shape)}; a single input tensor must be "
                           f"[rows, {len(specs)}] with columns {', '.join(spec.name for spec in specs)}")
    names = [spec.name for spec in specs]
    return [dict(zip(names, row, strict=True)) for row in array.tolist()]


# -- encoding a response ---------------------------------------------------------------------------


def encode_outputs(rows: list[dict[str, Any]], specs: list[TensorSpec], requested: dict[str, bool],
                   binary_default: bool) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Output tensors (JSON part) and their binary chunks, in order, for the requested outputs
    (already checked to exist); ``requested`` maps a name to whether it wants binary data."""
    tensors, chunks = [], []
    for spec in specs:
        if requested and spec.name not in requested:
            continue
        values = [row[spec.name] for row in rows]
        array = _to_array(values, spec)
        tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
        if requested.get(spec.name, binary_default):
            chunk = _to_bytes(array, spec)
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    return tensors, chunks


def _to_array(values: list[Any], spec: TensorSpec) -> np.ndarray:
    if spec.datatype == "BYTES":
        items = [orjson.dumps(v).decode() if spec.as_json else v for v in values]
        return np.array(items, dtype=object)
    return np.array(values, dtype=NUMPY_TYPES[spec.datatype])


def _to_bytes(array: np.ndarray, spec: TensorSpec) -> bytes:
    if spec.datatype != "BYTES":
        return array.astype(np.dtype(NUMPY_TYPES[spec.datatype]).newbyteorder("<"), copy=False).tobytes()
    parts = []
    for value in array.reshape(-1).tolist():
        raw = value if isinstance(value, bytes) else str(value).encode()
        parts.append(struct.pack("<I", len(raw)) + raw)
    return b"".join(parts)
