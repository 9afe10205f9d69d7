"""OIP v2 tensors over HTTP: JSON ``data`` or Triton's binary tensor extension, to rows and back."""

from __future__ import annotations

from typing import Any

from hostd.errors import InvalidInput
from hostd.tensors import (
    TensorSpec,
    array_from_bytes,
    array_from_values,
    array_to_bytes,
    check_datatype,
    output_arrays,
    rows_from_arrays,
    shaped,
    tensor_specs,
    unique_names,
)

__all__ = ["TensorSpec", "decode_inputs", "encode_outputs", "parameters", "tensor_specs"]


def decode_inputs(request: dict[str, Any], binary: memoryview, specs: list[TensorSpec]) -> list[dict[str, Any]]:
    """Rows (dicts for the input schema) from a v2 infer request and its binary tail."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("request has no 'inputs' (a list of tensors)")
    if not all(isinstance(tensor, dict) and isinstance(tensor.get("name"), str) for tensor in inputs):
        raise InvalidInput("every input tensor needs a 'name', a 'datatype', a 'shape' and 'data'")
    unique_names(tensor["name"] for tensor in inputs)
    arrays: dict[str, Any] = {}
    offset = 0
    for tensor in inputs:
        name = tensor["name"]
        datatype = check_datatype(name, tensor.get("datatype"))
        shape = tensor.get("shape")
        if not isinstance(shape, list) or any(isinstance(d, bool) for d in shape):  # JSON true is no size
            raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers")
        size = parameters(tensor, f"input '{name}'").get("binary_data_size")
        if size is None:
            flat = array_from_values(_flatten(_data(tensor, name)), datatype, name)
        else:
            flat = _binary(binary, offset, size, datatype, name)
            offset += size
        arrays[name] = shaped(flat, shape, name, datatype)
    if offset != len(binary):
        raise InvalidInput(f"binary data is {len(binary)} bytes but the inputs declare {offset}")
    return rows_from_arrays(arrays, specs)


def parameters(holder: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``parameters`` object of a request, tensor or requested output ({} when there is none)."""
    found = holder.get("parameters")
    if found is None:
        return {}
    if not isinstance(found, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object, not {type(found).__name__}")
    return found


def _data(tensor: dict[str, Any], name: str) -> Any:
    if tensor.get("data") is None:
        raise InvalidInput(f"input '{name}' has no 'data' (nor binary_data_size)")
    return tensor["data"]


def _binary(binary: memoryview, offset: int, size: Any, datatype: str, name: str) -> Any:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
    if offset + size > len(binary):
        raise InvalidInput(f"input '{name}': binary_data_size {size} runs past the end of the body")
    try:
        return array_from_bytes(binary[offset:offset + size], datatype)
    except ValueError as exc:
        raise InvalidInput(f"input '{name}': binary data does not match datatype {datatype}: {exc}") from None


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def encode_outputs(rows: list[dict[str, Any]], specs: list[TensorSpec], requested: dict[str, bool],
                   binary_default: bool) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Output tensors (JSON part) and their binary chunks, in order, for the requested outputs
    (already checked to exist); ``requested`` maps a name to whether it wants binary data."""
    tensors, chunks = [], []
    for spec, array in output_arrays(rows, specs, requested):
        tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
        if requested.get(spec.name, binary_default):
            chunk = array_to_bytes(array, spec.datatype)
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    return tensors, chunks
