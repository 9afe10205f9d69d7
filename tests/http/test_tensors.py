"""Open Inference Protocol v2 tensors <-> rows of a model's schema (plugins/hostd_http/tensors.py)."""

from __future__ import annotations

import struct
from enum import Enum
from typing import Annotated, Any

import numpy as np
import orjson
import pytest
from hostd_http.tensors import TensorSpec, decode_inputs, encode_outputs, tensor_specs
from pydantic import BaseModel, Field
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from hostd import tensors
from hostd.errors import InvalidInput
from tests.support.toy import EchoInput, EchoOutput
from tests.support.toy_http import GridInput, GridOutput

NO_BINARY = memoryview(b"")


class Kind(str, Enum):
    a = "alpha"
    b = "beta"


class Everything(BaseModel):
    number: float
    integer: int
    flag: bool
    text: str
    kind: Kind
    maybe_number: float | None = None
    maybe_integer: Annotated[int, Field(ge=0)] | None = None
    vector: Annotated[list[float], Field(min_length=4, max_length=4)]
    image: Annotated[list[Annotated[list[int], Field(min_length=3, max_length=3)]], Field(min_length=2, max_length=2)]
    ragged: list[float]
    mapping: dict[str, int]


class Point(BaseModel):
    a: float
    b: float
    c: int


POINT = tensor_specs(Point)
ECHO = tensor_specs(EchoInput)
GRID = tensor_specs(GridInput)


def by_name(specs: list[TensorSpec]) -> dict[str, TensorSpec]:
    return {spec.name: spec for spec in specs}


def binary_request(*tensors: tuple[str, str, list[int], bytes]) -> tuple[dict[str, Any], memoryview]:
    """A v2 request whose tensors all travel in the binary tail, as tritonclient sends them."""
    inputs = [{"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}}
              for name, datatype, shape, raw in tensors]
    return {"inputs": inputs}, memoryview(b"".join(raw for *_, raw in tensors))


def bytes_tensor(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def rejected(request: dict[str, Any], specs: list[TensorSpec], binary: memoryview = NO_BINARY) -> str:
    with pytest.raises(InvalidInput) as info:
        decode_inputs(request, binary, specs)
    return info.value.message


# -- tensor_specs ------------------------------------------------------------------------------------


def test_specs_map_json_types_to_v2_datatypes() -> None:
    specs = by_name(tensor_specs(Everything))
    assert {name: spec.datatype for name, spec in specs.items()} == {
        "number": "FP64", "integer": "INT64", "flag": "BOOL", "text": "BYTES", "kind": "BYTES",
        "maybe_number": "FP64", "maybe_integer": "INT64", "vector": "FP64", "image": "INT64",
        "ragged": "FP64", "mapping": "BYTES",
    }


def test_specs_keep_schema_field_order() -> None:
    assert [spec.name for spec in tensor_specs(Everything)] == list(Everything.model_fields)


def test_fixed_size_lists_become_dimensions_and_free_ones_minus_one() -> None:
    specs = by_name(tensor_specs(Everything))
    assert specs["number"].shape == ()
    assert specs["vector"].shape == (4,)
    assert specs["image"].shape == (2, 3)
    assert specs["ragged"].shape == (-1,)


def test_optional_fields_travel_as_their_type() -> None:
    specs = by_name(tensor_specs(Everything))
    assert specs["maybe_number"] == TensorSpec("maybe_number", "FP64", ())
    assert specs["maybe_integer"] == TensorSpec("maybe_integer", "INT64", ())


def test_values_tensors_cannot_hold_travel_as_json_text_in_bytes() -> None:
    specs = by_name(tensor_specs(Everything))
    assert specs["mapping"].as_json
    assert not specs["text"].as_json and not specs["kind"].as_json


def test_metadata_adds_the_row_dimension() -> None:
    specs = by_name(tensor_specs(Everything))
    assert specs["image"].metadata() == {"name": "image", "datatype": "INT64", "shape": [-1, 2, 3]}
    assert specs["text"].metadata() == {"name": "text", "datatype": "BYTES", "shape": [-1]}


# -- decode_inputs: JSON ------------------------------------------------------------------------------


def test_one_json_tensor_per_field_with_shape_n() -> None:
    request = {"inputs": [
        {"name": "x", "datatype": "FP64", "shape": [3], "data": [1.5, -2.0, 3.0]},
        {"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a", "b", "c"]},
        {"name": "fail", "datatype": "BOOL", "shape": [3], "data": [False, True, False]},
    ]}
    assert decode_inputs(request, NO_BINARY, ECHO) == [
        {"x": 1.5, "text": "a", "fail": False},
        {"x": -2.0, "text": "b", "fail": True},
        {"x": 3.0, "text": "c", "fail": False},
    ]


def test_scalar_field_as_n_by_1_with_nested_or_flat_data() -> None:
    nested = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1], "data": [[1.0], [2.0]]}]}
    flat = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1], "data": [1.0, 2.0]}]}
    assert decode_inputs(nested, NO_BINARY, ECHO) == [{"x": 1.0}, {"x": 2.0}]
    assert decode_inputs(flat, NO_BINARY, ECHO) == [{"x": 1.0}, {"x": 2.0}]


def test_fixed_shape_field_from_flat_and_nested_data() -> None:
    grid = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    nested = {"inputs": [{"name": "grid", "datatype": "FP64", "shape": [1, 2, 3], "data": [grid]}]}
    flat = {"inputs": [{"name": "grid", "datatype": "FP64", "shape": [1, 2, 3], "data": [1, 2, 3, 4, 5, 6]}]}
    assert decode_inputs(nested, NO_BINARY, GRID) == [{"grid": grid}]
    assert decode_inputs(flat, NO_BINARY, GRID) == [{"grid": grid}]


def test_single_n_by_f_tensor_maps_columns_in_schema_order() -> None:
    request = {"inputs": [{"name": "features", "datatype": "FP64", "shape": [2, 3],
                           "data": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}]}
    assert decode_inputs(request, NO_BINARY, POINT) == [{"a": 1.0, "b": 2.0, "c": 3.0},
                                                        {"a": 4.0, "b": 5.0, "c": 6.0}]


def test_single_tensor_of_one_row_may_be_one_dimensional() -> None:
    request = {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}]}
    assert decode_inputs(request, NO_BINARY, POINT) == [{"a": 1.0, "b": 2.0, "c": 3.0}]


def test_single_tensor_with_the_wrong_number_of_columns_names_the_columns() -> None:
    request = {"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 2], "data": [1.0, 2.0]}]}
    message = rejected(request, POINT)
    assert "features" in message and "[rows, 3]" in message and "a, b, c" in message


def test_single_unknown_tensor_for_a_model_with_non_numeric_fields_is_unknown() -> None:
    request = {"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    message = rejected(request, ECHO)
    assert "unknown input tensor 'features'" in message and "x" in message


# -- decode_inputs: binary (Triton's binary tensor extension) -----------------------------------------


def test_binary_numeric_tensors_little_endian() -> None:
    x = np.array([1.25, -3.5], dtype="<f4")
    fail = np.array([True, False])
    request, binary = binary_request(("x", "FP32", [2], x.tobytes()), ("fail", "BOOL", [2], fail.tobytes()))
    assert decode_inputs(request, binary, ECHO) == [{"x": 1.25, "fail": True}, {"x": -3.5, "fail": False}]


def test_binary_is_read_little_endian() -> None:
    raw = struct.pack("<2d", 0.5, 7.0)  # what a little-endian client writes, independent of numpy
    request, binary = binary_request(("x", "FP64", [2, 1], raw))
    assert decode_inputs(request, binary, ECHO) == [{"x": 0.5}, {"x": 7.0}]


def test_binary_bytes_tensor_is_length_prefixed() -> None:
    raw = bytes_tensor(b"hello", b"", "gr\u00fc\u00df".encode())
    request, binary = binary_request(("text", "BYTES", [3], raw))
    assert decode_inputs(request, binary, ECHO) == [{"text": "hello"}, {"text": ""}, {"text": "gr\u00fc\u00df"}]


def test_binary_bytes_tensor_as_tritonclient_serialises_it() -> None:
    raw = serialize_byte_tensor(np.array([b"red", b"green"], dtype=object)).item()
    request, binary = binary_request(("colour", "BYTES", [2, 1], raw))
    assert decode_inputs(request, binary, GRID) == [{"colour": "red"}, {"colour": "green"}]


def test_binary_and_json_tensors_mix_in_one_request() -> None:
    request, binary = binary_request(("grid", "INT32", [1, 2, 3], np.arange(6, dtype="<i4").tobytes()))
    request["inputs"].append({"name": "label", "datatype": "BYTES", "shape": [1], "data": ["z"]})
    assert decode_inputs(request, binary, GRID) == [{"grid": [[0, 1, 2], [3, 4, 5]], "label": "z"}]


def test_binary_single_n_by_f_tensor() -> None:
    features = np.array([[1, 2, 3], [4, 5, 6]], dtype="<f8")
    request, binary = binary_request(("input__0", "FP64", [2, 3], features.tobytes()))
    assert decode_inputs(request, binary, POINT) == [{"a": 1.0, "b": 2.0, "c": 3.0},
                                                     {"a": 4.0, "b": 5.0, "c": 6.0}]


# -- decode_inputs: errors name the input ------------------------------------------------------------


def test_unknown_tensor_name() -> None:
    request = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]},
                          {"name": "colour", "datatype": "BYTES", "shape": [1], "data": ["red"]}]}
    message = rejected(request, ECHO)
    assert "unknown input tensor(s) colour" in message and "x, delay_ms, fail, text" in message


@pytest.mark.parametrize(("field", "datatype", "data", "expects"), [
    ("x", "BYTES", ["1.0"], "FP64"),
    ("text", "FP64", [1.0], "BYTES"),
    ("colour", "INT64", [1], "BYTES"),
    ("count", "BYTES", ["3"], "INT64"),
])
def test_wrong_datatype_for_a_field(field: str, datatype: str, data: list[Any], expects: str) -> None:
    specs = ECHO if field in EchoInput.model_fields else GRID
    message = rejected({"inputs": [{"name": field, "datatype": datatype, "shape": [1], "data": data}]}, specs)
    assert f"'{field}'" in message and expects in message


def test_bytes_sent_where_a_number_is_expected_in_binary() -> None:
    request, binary = binary_request(("x", "BYTES", [1], bytes_tensor(b"1.5")))
    message = rejected(request, ECHO, binary)
    assert "'x'" in message and "BYTES" in message


def test_string_data_in_a_numeric_tensor() -> None:
    request = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1.0, "two"]}]}
    message = rejected(request, ECHO)
    assert "'x'" in message and "non-numeric" in message


def test_non_boolean_data_in_a_bool_tensor() -> None:
    request = {"inputs": [{"name": "fail", "datatype": "BOOL", "shape": [1], "data": [1]}]}
    assert "'fail'" in rejected(request, ECHO)


@pytest.mark.parametrize(("shape", "data"), [([3], [1.0, 2.0]), ([2], [1.0, 2.0, 3.0]), ([2, 2], [1.0, 2.0])])
def test_data_length_not_matching_the_shape(shape: list[int], data: list[float]) -> None:
    message = rejected({"inputs": [{"name": "x", "datatype": "FP64", "shape": shape, "data": data}]}, ECHO)
    assert "'x'" in message and str(shape) in message


def test_rows_disagreeing_between_tensors() -> None:
    request = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]},
                          {"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a", "b", "c"]}]}
    message = rejected(request, ECHO)
    assert "rows" in message and "'x': 2" in message and "'text': 3" in message


def test_binary_size_past_the_end_of_the_body() -> None:
    request, binary = binary_request(("x", "FP64", [2], np.zeros(2, "<f8").tobytes()))
    message = rejected(request, ECHO, binary[:12])
    assert "'x'" in message and "binary_data_size 16" in message


def test_binary_size_not_a_multiple_of_the_element_size() -> None:
    request, binary = binary_request(("x", "FP64", [1], b"\x00" * 7))
    message = rejected(request, ECHO, binary)
    assert "'x'" in message and "FP64" in message


def test_binary_shorter_than_the_shape() -> None:
    request, binary = binary_request(("x", "FP32", [3], np.zeros(2, "<f4").tobytes()))
    message = rejected(request, ECHO, binary)
    assert "'x'" in message and "[3]" in message


def test_truncated_bytes_element() -> None:
    raw = bytes_tensor(b"hello")[:-2]  # the length says 5, only 3 bytes follow
    request, binary = binary_request(("text", "BYTES", [1], raw))
    message = rejected(request, ECHO, binary)
    assert "'text'" in message and "truncated" in message


def test_truncated_bytes_length_prefix() -> None:
    request, binary = binary_request(("text", "BYTES", [2], bytes_tensor(b"ab") + b"\x01\x00"))
    message = rejected(request, ECHO, binary)
    assert "'text'" in message and "truncated" in message


def test_binary_tail_longer_than_declared() -> None:
    request, binary = binary_request(("x", "FP64", [1], struct.pack("<d", 1.0)))
    message = rejected(request, ECHO, memoryview(bytes(binary) + b"\x00" * 8))
    assert "16 bytes" in message and "8" in message


@pytest.mark.parametrize("size", ["8", 8.5, -8, [8]])
def test_binary_data_size_that_is_not_a_byte_count(size: Any) -> None:
    # A client bug must be a 400 naming the input, never a crash (500) or a silent misread.
    request = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1],
                           "parameters": {"binary_data_size": size}}]}
    message = rejected(request, ECHO, memoryview(struct.pack("<d", 1.0)))
    assert "'x'" in message and "binary_data_size" in message


@pytest.mark.parametrize("request_body", [
    {}, {"inputs": []}, {"inputs": {"x": [1]}},
    {"inputs": [{"datatype": "FP64", "shape": [1], "data": [1.0]}]},
])
def test_requests_without_usable_inputs(request_body: dict[str, Any]) -> None:
    assert "input" in rejected(request_body, ECHO)


@pytest.mark.parametrize(("tensor", "names"), [
    ({"name": "x", "datatype": "FP128", "shape": [1], "data": [1.0]}, ("'x'", "FP128")),
    ({"name": "x", "datatype": "FP64", "shape": [-1], "data": [1.0]}, ("'x'", "shape")),
    ({"name": "x", "datatype": "FP64", "shape": "1", "data": [1.0]}, ("'x'", "shape")),
    ({"name": "x", "datatype": "FP64", "shape": [1]}, ("'x'", "data")),
])
def test_malformed_tensors_name_the_input(tensor: dict[str, Any], names: tuple[str, ...]) -> None:
    message = rejected({"inputs": [tensor]}, ECHO)
    assert all(name in message for name in names)


# -- decode_inputs: what the adversarial run of issue 13 sent ------------------------------------------


def tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def test_an_input_tensor_given_twice_is_refused() -> None:
    # The second one silently replaced the first.
    request = {"inputs": [tensor("x", "FP64", [1], [1.0]), tensor("x", "FP64", [1], [2.0])]}
    assert rejected(request, ECHO) == "input tensor 'x' is given twice"


def test_unique_names_is_the_check_every_transport_shares() -> None:
    tensors.unique_names(["a", "b", "c"])
    with pytest.raises(InvalidInput, match="input tensor 'b' is given twice"):
        tensors.unique_names(iter(["a", "b", "c", "b"]))


def test_a_bool_single_tensor_for_numeric_inputs_says_booleans() -> None:
    # It was taken as the numbers 1 and 0 and refused for being out of range.
    request = {"inputs": [tensor("input", "BOOL", [1, 3], [True, False, True])]}
    message = rejected(request, POINT)
    assert message.startswith("input 'input' was sent as BOOL; a single input tensor must be numeric (booleans "
                              "are not numbers), [rows, 3] with columns a, b, c")


def test_a_bool_tensor_for_a_numeric_field_says_booleans() -> None:
    message = rejected({"inputs": [tensor("x", "BOOL", [1], [True])]}, ECHO)
    assert message == "input 'x' was sent as BOOL; the model expects FP64 (booleans are not numbers)"


def test_a_numeric_tensor_for_a_boolean_field_says_booleans() -> None:
    message = rejected({"inputs": [tensor("fail", "INT64", [1], [1])]}, ECHO)
    assert message == "input 'fail' was sent as INT64; the model expects BOOL (numbers are not booleans)"


def test_a_bool_tensor_in_binary_for_a_numeric_field_says_booleans() -> None:
    request, binary = binary_request(("x", "BOOL", [2], np.array([True, False]).tobytes()))
    assert "booleans" in rejected(request, ECHO, binary)


def test_a_bytes_single_tensor_for_numeric_inputs_says_it_must_be_numeric() -> None:
    # It was reported as an "unknown input tensor", although any name goes for the one [rows, fields] tensor.
    request = {"inputs": [tensor("input", "BYTES", [1, 3], ["1", "2", "3"])]}
    message = rejected(request, POINT)
    assert "unknown" not in message
    assert message == ("input 'input' was sent as BYTES; a single input tensor must be numeric, [rows, 3] with "
                       "columns a, b, c (or send one tensor per input, named as the inputs)")


def test_a_known_tensor_whose_shape_the_field_does_not_take() -> None:
    # A scalar field sent as [1, 4]: the model would have got a list where it takes a number.
    message = rejected({"inputs": [tensor("x", "FP64", [1, 4], [1.0, 2.0, 3.0, 4.0])]}, ECHO)
    assert message == "input 'x' has shape [1, 4]; the model expects [rows] (or [rows, 1])"
    message = rejected({"inputs": [tensor("text", "BYTES", [1, 4], ["a", "b", "c", "d"])]}, ECHO)
    assert message == "input 'text' has shape [1, 4]; the model expects [rows] (or [rows, 1])"


def test_a_fixed_shape_field_names_its_shape() -> None:
    message = rejected({"inputs": [tensor("grid", "FP64", [1, 3, 2], [1.0] * 6)]}, GRID)
    assert message == "input 'grid' has shape [1, 3, 2]; the model expects [rows, 2, 3]"


def test_a_free_dimension_takes_any_size() -> None:
    class Ragged(BaseModel):
        values: list[float]

    request = {"inputs": [tensor("values", "FP32", [2, 3], [1, 2, 3, 4, 5, 6])]}
    assert decode_inputs(request, NO_BINARY, tensor_specs(Ragged)) == [{"values": [1.0, 2.0, 3.0]},
                                                                        {"values": [4.0, 5.0, 6.0]}]
    message = rejected({"inputs": [tensor("values", "FP32", [2], [1, 2])]}, tensor_specs(Ragged))
    assert message == "input 'values' has shape [2]; the model expects [rows, n]"


@pytest.mark.parametrize("shape", [[True, 4], [1, False]])
def test_shaped_takes_no_booleans_as_sizes(shape: list[Any]) -> None:
    # gRPC's decode_inputs calls shaped() without the HTTP transport's own check.
    with pytest.raises(InvalidInput, match="'x': the shape must be non-negative integers"):
        tensors.shaped(np.zeros(4), shape, "x", "FP64")


# -- encode_outputs -------------------------------------------------------------------------------------


ROWS = [{"total": 1.5, "count": 2, "flag": True, "label": "AB", "colour": "red"},
        {"total": -4.0, "count": 7, "flag": False, "label": "", "colour": "green"}]
OUT = tensor_specs(GridOutput)


def test_encode_json_outputs_one_tensor_per_field() -> None:
    tensors, chunks = encode_outputs(ROWS, OUT, {}, binary_default=False)
    assert chunks == []
    assert tensors == [
        {"name": "total", "datatype": "FP64", "shape": [2], "data": [1.5, -4.0]},
        {"name": "count", "datatype": "INT64", "shape": [2], "data": [2, 7]},
        {"name": "flag", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["AB", ""]},
        {"name": "colour", "datatype": "BYTES", "shape": [2], "data": ["red", "green"]},
    ]
    orjson.dumps(tensors)  # the JSON part must be serialisable as is


def test_encode_binary_outputs_round_trip() -> None:
    tensors, chunks = encode_outputs(ROWS, OUT, {}, binary_default=True)
    assert [t["parameters"]["binary_data_size"] for t in tensors] == [len(chunk) for chunk in chunks]
    assert all("data" not in t for t in tensors)
    decoded = dict(zip([t["name"] for t in tensors], chunks, strict=True))
    assert np.frombuffer(decoded["total"], "<f8").tolist() == [1.5, -4.0]
    assert np.frombuffer(decoded["count"], "<i8").tolist() == [2, 7]
    assert decoded["flag"] == b"\x01\x00"
    assert decoded["label"] == bytes_tensor(b"AB", b"")
    assert deserialize_bytes_tensor(decoded["colour"]).tolist() == [b"red", b"green"]


def test_encode_only_the_requested_outputs_each_in_its_own_form() -> None:
    tensors, chunks = encode_outputs(ROWS, OUT, {"colour": True, "count": False}, binary_default=False)
    assert [t["name"] for t in tensors] == ["count", "colour"]
    assert tensors[0]["data"] == [2, 7]
    assert tensors[1]["parameters"] == {"binary_data_size": len(chunks[0])}
    assert chunks == [bytes_tensor(b"red", b"green")]


def test_encode_fixed_shape_outputs_keep_their_dimensions() -> None:
    class Out(BaseModel):
        pair: Annotated[list[int], Field(min_length=2, max_length=2)]

    rows = [{"pair": [1, 2]}, {"pair": [3, 4]}, {"pair": [5, 6]}]
    (tensor,), _ = encode_outputs(rows, tensor_specs(Out), {}, binary_default=False)
    assert tensor == {"name": "pair", "datatype": "INT64", "shape": [3, 2], "data": [1, 2, 3, 4, 5, 6]}
    (tensor,), (chunk,) = encode_outputs(rows, tensor_specs(Out), {}, binary_default=True)
    assert np.frombuffer(chunk, "<i8").reshape(tensor["shape"]).tolist() == [[1, 2], [3, 4], [5, 6]]


def test_encode_json_valued_fields_as_json_text() -> None:
    class Out(BaseModel):
        scores: dict[str, float]

    rows = [{"scores": {"a": 0.25}}]
    (tensor,), _ = encode_outputs(rows, tensor_specs(Out), {}, binary_default=False)
    assert tensor["datatype"] == "BYTES"
    assert [orjson.loads(text) for text in tensor["data"]] == [{"a": 0.25}]


def test_decode_of_encoded_outputs_gives_the_rows_back() -> None:
    # Outputs of one model can feed a model whose inputs have the same schema.
    rows = [{"y": 2.0, "text": "A"}, {"y": -1.0, "text": "b c"}]
    specs = tensor_specs(EchoOutput)
    tensors, chunks = encode_outputs(rows, specs, {}, binary_default=True)
    request = {"inputs": tensors}
    assert decode_inputs(request, memoryview(b"".join(chunks)), specs) == rows
