"""inference.GRPCInferenceService in-process (plugins/hostd_grpc/inference.py, unary.py, status.py).

Codec functions are called directly; whole RPCs go through grpclib's in-memory channel
(``grpclib.testing.ChannelFor``), so status codes and messages are what a client sees, without sockets.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import anyio
import numpy as np
import pytest
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1 import health_pb2
from grpclib.testing import ChannelFor
from hostd_grpc import inference, oip
from hostd_grpc._proto import inference as pb
from hostd_grpc.inference import SERVICE
from hostd_grpc.plugin import GrpcSettings
from hostd_grpc.serving import build_services
from hostd_grpc.status import grpc_errors
from pydantic import BaseModel
from sklearn.datasets import load_iris

from hostd.dataplane import DataPlane, Prediction
from hostd.errors import (
    ErrorCode,
    HostdError,
    InvalidInput,
    ModelError,
    ModelNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    Timeout,
)
from hostd.registry import Registry
from hostd.settings import HostSettings
from hostd.tasks import InFlight
from hostd.tensors import output_arrays, rows_from_arrays, tensor_specs

pytestmark = pytest.mark.anyio

Tensor: TypeAlias = pb.ModelInferRequestInferInputTensor
IRIS_FIELDS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SETTINGS = {
    "models": [
        {"class_path": "iris_model.model:IrisModel"},
        {"class_path": "tests.support.toy:EchoModel"},  # echo: y = 2x, text upper-cased
        {"class_path": "tests.support.toy:EchoModel", "configuration": {"name": "slow"}, "timeout_ms": 100},
        {"class_path": "tests.support.toy_http:GridModel"},
        {"class_path": "tests.support.toy_grpc:UntypeableDict"},
    ],
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def dataplane() -> DataPlane:
    plane = DataPlane(Registry.from_settings(HostSettings.model_validate(SETTINGS)))
    plane.set_ready()
    return plane


@pytest.fixture
async def channel(dataplane: DataPlane) -> AsyncIterator[Channel]:
    # grpclib's own codec, as the transport's Server uses it.
    async with ChannelFor(build_services(dataplane, GrpcSettings(), InFlight())) as chan:
        yield chan


async def _unary(channel: Channel, path: str, request: Any, reply_type: type) -> Any:
    """One unary call; a non-OK status raises GRPCError (as a client sees it)."""
    method: UnaryUnaryMethod[Any, Any] = UnaryUnaryMethod(channel, path, type(request), reply_type)
    return await method(request)


async def infer(channel: Channel, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    return await _unary(channel, f"/{SERVICE}/ModelInfer", request, pb.ModelInferResponse)


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The server's decode_inputs, given the message as the server gets it off the wire."""
    return inference.decode_inputs(oip.ModelInferRequest.FromString(bytes(request)))


def encode_outputs(served: Any, request: pb.ModelInferRequest, arrays: Any) -> pb.ModelInferResponse:
    """The server's encode_outputs for an answer of ``served``, with its reply as a client would parse it."""
    answer = Prediction(served.name, served.version, [])
    reply = inference.encode_outputs(answer, oip.ModelInferRequest.FromString(bytes(request)), arrays)
    return pb.ModelInferResponse.parse(reply.SerializeToString())


def fp64(name: str, values: list[float], shape: list[int] | None = None) -> Tensor:
    return Tensor(name=name, datatype="FP64", shape=shape or [len(values)],
                  contents=pb.InferTensorContents(fp64_contents=values))


def raw_tensor(name: str, datatype: str, shape: list[int]) -> Tensor:
    return Tensor(name=name, datatype=datatype, shape=shape)


def bytes_element(*values: bytes) -> bytes:
    """tritonclient's BYTES serialisation: each element is a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(value)) + value for value in values)


# -- decode_inputs: typed contents -------------------------------------------------------------------------


@pytest.mark.parametrize(("datatype", "field", "values", "dtype"), [
    ("FP64", "fp64_contents", [1.5, -2.25], np.float64),
    ("FP32", "fp32_contents", [1.5, -2.25], np.float32),
    ("INT64", "int64_contents", [2**40, -3], np.int64),
    ("INT32", "int_contents", [7, -3], np.int32),
    ("INT16", "int_contents", [300, -3], np.int16),
    ("UINT8", "uint_contents", [0, 255], np.uint8),
    ("UINT64", "uint64_contents", [2**63, 1], np.uint64),
    ("BOOL", "bool_contents", [True, False], np.bool_),
])
def test_typed_contents_decode_to_arrays_of_the_datatype(datatype: str, field: str, values: list[Any],
                                                        dtype: Any) -> None:
    tensor = Tensor(name="t", datatype=datatype, shape=[2, 1],
                    contents=pb.InferTensorContents(**{field: values}))
    (array,) = decode_inputs(pb.ModelInferRequest(model_name="m", inputs=[tensor])).values()
    assert array.dtype == dtype and array.shape == (2, 1)
    assert array.reshape(-1).tolist() == values


def test_bytes_contents_decode_to_bytes_objects() -> None:
    tensor = Tensor(name="text", datatype="BYTES", shape=[2],
                    contents=pb.InferTensorContents(bytes_contents=[b"ab", "hé".encode()]))
    arrays = decode_inputs(pb.ModelInferRequest(inputs=[tensor]))
    assert arrays["text"].tolist() == [b"ab", "hé".encode()]


def test_values_in_the_wrong_contents_field_are_named() -> None:
    tensor = Tensor(name="x", datatype="FP64", shape=[2], contents=pb.InferTensorContents(fp32_contents=[1.0, 2.0]))
    with pytest.raises(InvalidInput) as caught:
        decode_inputs(pb.ModelInferRequest(inputs=[tensor]))
    assert caught.value.message == "input 'x' is FP64, so its values belong in fp64_contents, not fp32_contents"

    tensor = Tensor(name="count", datatype="INT64", shape=[1], contents=pb.InferTensorContents(int_contents=[3]))
    with pytest.raises(InvalidInput, match="input 'count' is INT64, so its values belong in int64_contents, "
                                           "not int_contents"):
        decode_inputs(pb.ModelInferRequest(inputs=[tensor]))


def test_fp16_must_travel_raw() -> None:
    tensor = Tensor(name="x", datatype="FP16", shape=[1], contents=pb.InferTensorContents(fp32_contents=[1.0]))
    with pytest.raises(InvalidInput, match="input 'x': FP16 must be sent in raw_input_contents"):
        decode_inputs(pb.ModelInferRequest(inputs=[tensor]))

    raw = np.array([1.5, -2.0], dtype="<f2").tobytes()
    arrays = decode_inputs(pb.ModelInferRequest(inputs=[raw_tensor("x", "FP16", [2])], raw_input_contents=[raw]))
    assert arrays["x"].dtype == np.float16 and arrays["x"].tolist() == [1.5, -2.0]


def test_unknown_datatype_is_named() -> None:
    tensor = Tensor(name="x", datatype="FP8", shape=[1], contents=pb.InferTensorContents(fp32_contents=[1.0]))
    with pytest.raises(InvalidInput, match="input 'x': unsupported datatype 'FP8'"):
        decode_inputs(pb.ModelInferRequest(inputs=[tensor]))


def test_values_that_do_not_fill_the_shape() -> None:
    with pytest.raises(InvalidInput, match=r"input 'x': 2 values do not fill shape \[3\] \(FP64\)"):
        decode_inputs(pb.ModelInferRequest(inputs=[fp64("x", [1.0, 2.0], shape=[3])]))


def test_integers_out_of_range_for_the_datatype_are_invalid_input() -> None:
    tensor = Tensor(name="small", datatype="INT8", shape=[2], contents=pb.InferTensorContents(int_contents=[1, 300]))
    with pytest.raises(InvalidInput, match="small"):
        decode_inputs(pb.ModelInferRequest(inputs=[tensor]))


# -- decode_inputs: raw_input_contents (tritonclient) ----------------------------------------------------


def test_raw_contents_decode_little_endian_per_input() -> None:
    image = np.arange(2 * 8 * 8, dtype="<i8").reshape(2, 8, 8)
    request = pb.ModelInferRequest(
        inputs=[raw_tensor("image", "INT64", [2, 8, 8]), raw_tensor("x", "FP32", [2]),
                raw_tensor("text", "BYTES", [2])],
        raw_input_contents=[image.tobytes(), np.array([0.5, 4.0], dtype="<f4").tobytes(),
                            bytes_element(b"a", b"")],
    )
    arrays = decode_inputs(request)
    assert arrays["image"].dtype == np.int64 and np.array_equal(arrays["image"], image)
    assert arrays["x"].dtype == np.float32 and arrays["x"].tolist() == [0.5, 4.0]
    assert arrays["text"].tolist() == [b"a", b""]


def test_raw_entries_must_match_the_inputs_one_to_one() -> None:
    request = pb.ModelInferRequest(inputs=[raw_tensor("a", "FP64", [1]), raw_tensor("b", "FP64", [1])],
                                   raw_input_contents=[np.float64(1).tobytes()])
    with pytest.raises(InvalidInput, match="raw_input_contents has 1 entries for 2 inputs"):
        decode_inputs(request)


def test_raw_bytes_that_are_not_whole_elements() -> None:
    request = pb.ModelInferRequest(inputs=[raw_tensor("x", "FP64", [1])], raw_input_contents=[b"\x00" * 7])
    with pytest.raises(InvalidInput, match="input 'x': raw contents do not match datatype FP64"):
        decode_inputs(request)


def test_raw_count_that_does_not_fill_the_shape() -> None:
    request = pb.ModelInferRequest(inputs=[raw_tensor("x", "FP64", [3])],
                                   raw_input_contents=[np.array([1.0, 2.0]).tobytes()])
    with pytest.raises(InvalidInput, match=r"input 'x': 2 values do not fill shape \[3\]"):
        decode_inputs(request)


def test_truncated_raw_bytes_element() -> None:
    request = pb.ModelInferRequest(inputs=[raw_tensor("text", "BYTES", [1])],
                                   raw_input_contents=[struct.pack("<I", 10) + b"abc"])
    with pytest.raises(InvalidInput, match="input 'text': raw contents do not match datatype BYTES"):
        decode_inputs(request)


# -- encode_outputs ------------------------------------------------------------------------------------------


def echo_outputs(dataplane: DataPlane) -> tuple[Any, list[Any]]:
    served = dataplane.model("echo")
    rows = [{"y": 2.0, "text": "A"}, {"y": -1.5, "text": "É"}]
    return served, output_arrays(rows, tensor_specs(served.model.output_schema))


def test_outputs_use_typed_contents_when_the_request_did(dataplane: DataPlane) -> None:
    served, arrays = echo_outputs(dataplane)
    reply = encode_outputs(served, pb.ModelInferRequest(id="r-1", inputs=[fp64("x", [1.0, -0.75])]), arrays)
    assert (reply.model_name, reply.model_version, reply.id) == ("echo", "1.0.0", "r-1")
    assert reply.raw_output_contents == []
    y, text = reply.outputs
    assert (y.name, y.datatype, y.shape, y.contents.fp64_contents) == ("y", "FP64", [2], [2.0, -1.5])
    assert (text.name, text.datatype, text.shape, text.contents.bytes_contents) == (
        "text", "BYTES", [2], [b"A", "É".encode()])


def test_outputs_are_raw_when_the_request_was_raw(dataplane: DataPlane) -> None:
    served, arrays = echo_outputs(dataplane)
    request = pb.ModelInferRequest(inputs=[raw_tensor("x", "FP64", [2])],
                                   raw_input_contents=[np.array([1.0, -0.75]).tobytes()])
    reply = encode_outputs(served, request, arrays)
    assert all(output.contents is None for output in reply.outputs)
    y, text = reply.raw_output_contents
    assert np.frombuffer(y, dtype="<f8").tolist() == [2.0, -1.5]
    assert text == bytes_element(b"A", "É".encode())


# -- whole RPCs over grpclib's in-memory channel -------------------------------------------------------------


def iris_request(raw: bool) -> tuple[pb.ModelInferRequest, list[str]]:
    rows = load_iris().data[[0, 50, 100]]
    if raw:
        inputs = [raw_tensor(name, "FP32", [3]) for name in IRIS_FIELDS]
        contents = [rows[:, i].astype("<f4").tobytes() for i in range(4)]
        request = pb.ModelInferRequest(model_name="iris_model", inputs=inputs, raw_input_contents=contents)
    else:
        request = pb.ModelInferRequest(model_name="iris_model",
                                       inputs=[fp64(name, rows[:, i].tolist()) for i, name in enumerate(IRIS_FIELDS)])
    return request, ["Iris setosa", "Iris versicolor", "Iris virginica"]


async def test_model_infer_with_typed_contents_answers_typed(channel: Channel) -> None:
    request, species = iris_request(raw=False)
    reply = await infer(channel, request)
    (output,) = reply.outputs
    assert (output.name, output.datatype, output.shape) == ("species", "BYTES", [3])
    assert [value.decode() for value in output.contents.bytes_contents] == species
    assert reply.raw_output_contents == []


async def test_model_infer_with_raw_contents_answers_raw(channel: Channel) -> None:
    request, species = iris_request(raw=True)
    reply = await infer(channel, request)
    assert reply.outputs[0].contents is None
    assert reply.raw_output_contents == [bytes_element(*(name.encode() for name in species))]


async def test_model_infer_returns_only_the_requested_outputs(channel: Channel) -> None:
    request = pb.ModelInferRequest(model_name="echo", inputs=[fp64("x", [4.0])],
                                   outputs=[pb.ModelInferRequestInferRequestedOutputTensor(name="text")])
    reply = await infer(channel, request)
    assert [output.name for output in reply.outputs] == ["text"]

    request.outputs = [pb.ModelInferRequestInferRequestedOutputTensor(name="z")]
    with pytest.raises(GRPCError) as caught:
        await infer(channel, request)
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert caught.value.message == "INVALID_INPUT: unknown output(s) z; the model's outputs are y, text"


async def test_a_model_without_a_typed_service_is_served_over_oip(channel: Channel) -> None:
    # dict_model's `weights` is a dict: no typed message, but OIP v2 carries it as JSON in BYTES.
    weights = Tensor(name="weights", datatype="BYTES", shape=[1],
                     contents=pb.InferTensorContents(bytes_contents=[b'{"a": 1.5, "b": 2}']))
    reply = await infer(channel, pb.ModelInferRequest(model_name="dict_model", inputs=[fp64("x", [2.0]), weights]))
    assert reply.outputs[0].contents.fp64_contents == [7.0]


@pytest.mark.parametrize(("request_", "status", "message"), [
    (pb.ModelInferRequest(model_name="nope", inputs=[fp64("x", [1.0])]), Status.NOT_FOUND,
     "MODEL_NOT_FOUND: model 'nope' is not served here"),
    (pb.ModelInferRequest(model_name="echo", model_version="9", inputs=[fp64("x", [1.0])]), Status.NOT_FOUND,
     "MODEL_NOT_FOUND: model 'echo' has no version '9' (served: 1.0.0)"),
    (pb.ModelInferRequest(model_name="echo", inputs=[Tensor(name="x", datatype="BYTES", shape=[1], contents=
                                                            pb.InferTensorContents(bytes_contents=[b"1"]))]),
     Status.INVALID_ARGUMENT, "INVALID_INPUT: input 'x' was sent as BYTES; the model expects FP64"),
    (pb.ModelInferRequest(model_name="echo", inputs=[fp64("x", [1.0, 2.0], shape=[3])]), Status.INVALID_ARGUMENT,
     "INVALID_INPUT: input 'x': 2 values do not fill shape [3] (FP64)"),
    (pb.ModelInferRequest(model_name="echo", inputs=[fp64("x", [5000.0])]), Status.INVALID_ARGUMENT,
     "INVALID_INPUT: invalid input for model 'echo': x: Input should be less than or equal to 1000"),
    (pb.ModelInferRequest(model_name="echo", inputs=[fp64("x", [1.0]), Tensor(name="fail", datatype="BOOL", shape=[1],
                          contents=pb.InferTensorContents(bool_contents=[True]))]), Status.INTERNAL,
     "MODEL_ERROR: model 'echo' failed: RuntimeError: asked to fail"),
    # 2 s in the model against a 100 ms timeout_ms: the timeout strikes first however busy the machine.
    (pb.ModelInferRequest(model_name="slow", inputs=[fp64("x", [1.0]), fp64("delay_ms", [2000.0])]),
     Status.DEADLINE_EXCEEDED, "TIMEOUT: model 'slow' did not answer within 100 ms"),
], ids=["unknown-model", "unknown-version", "bytes-for-a-number", "wrong-shape", "out-of-range", "model-raises",
        "timeout_ms"])
async def test_errors_map_to_status_codes_with_the_problem_in_the_message(
        channel: Channel, request_: pb.ModelInferRequest, status: Status, message: str) -> None:
    with pytest.raises(GRPCError) as caught:
        await infer(channel, request_)
    assert caught.value.status is status
    assert caught.value.message is not None and caught.value.message.startswith(message)
    # The service keeps answering after each error.
    reply = await infer(channel, pb.ModelInferRequest(model_name="echo", inputs=[fp64("x", [21.0])]))
    assert reply.outputs[0].contents.fp64_contents == [42.0]


class Garbage:
    """A "message" whose wire form is whatever bytes it was given."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


@pytest.mark.parametrize("data", [b"not a protobuf message at all", b"\x08" + b"\xff" * 11],
                         ids=["text", "overlong-varint"])
async def test_undecodable_bytes_are_invalid_argument(channel: Channel, data: bytes) -> None:
    with pytest.raises(GRPCError) as caught:
        await _unary(channel, f"/{SERVICE}/ModelInfer", Garbage(data), pb.ModelInferResponse)
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert caught.value.message is not None
    assert caught.value.message.startswith("INVALID_INPUT: request is not a valid ModelInferRequest")


async def test_a_truncated_message_is_invalid_argument(channel: Channel) -> None:
    # A well-formed echo request, then a field (id) that claims 16 bytes but ends after 2:
    # protobuf parsers reject such a message rather than act on part of it.
    whole = bytes(pb.ModelInferRequest(model_name="echo", inputs=[fp64("x", [1.0])]))
    with pytest.raises(GRPCError) as caught:
        await _unary(channel, f"/{SERVICE}/ModelInfer", Garbage(whole + b"\x1a\x10ab"), pb.ModelInferResponse)
    assert caught.value.status is Status.INVALID_ARGUMENT


async def test_health_and_metadata_rpcs(channel: Channel, dataplane: DataPlane) -> None:
    assert (await _unary(channel, f"/{SERVICE}/ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse)).live
    assert (await _unary(channel, f"/{SERVICE}/ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse)).ready
    ready = await _unary(channel, f"/{SERVICE}/ModelReady", pb.ModelReadyRequest(name="iris_model"),
                         pb.ModelReadyResponse)
    assert ready.ready
    metadata = await _unary(channel, f"/{SERVICE}/ModelMetadata", pb.ModelMetadataRequest(name="grid"),
                             pb.ModelMetadataResponse)
    assert (metadata.name, metadata.versions, metadata.platform) == ("grid", ["1.0.0"], "hostd")
    assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [
        ("scale", "FP64", [-1]), ("count", "INT64", [-1]), ("flag", "BOOL", [-1]), ("label", "BYTES", [-1]),
        ("colour", "BYTES", [-1]), ("grid", "FP64", [-1, 2, 3])]

    dataplane.start_draining()
    assert not (await _unary(channel, f"/{SERVICE}/ServerReady", pb.ServerReadyRequest(),
                             pb.ServerReadyResponse)).ready
    with pytest.raises(GRPCError) as caught:
        await infer(channel, pb.ModelInferRequest(model_name="echo", inputs=[fp64("x", [1.0])]))
    assert caught.value.status is Status.UNAVAILABLE
    assert caught.value.message == "NOT_READY: hostd is draining; not accepting predictions"


async def health(channel: Channel, service: str) -> int:
    reply = await _unary(channel, "/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest(service=service),
                         health_pb2.HealthCheckResponse)
    return int(reply.status)


async def test_health_check_follows_readiness(channel: Channel, dataplane: DataPlane) -> None:
    for service in ("", SERVICE, "hostd.models.iris_model.IrisModel"):
        assert await health(channel, service) == health_pb2.HealthCheckResponse.SERVING, service

    dataplane.start_draining()
    with anyio.fail_after(10):  # a hang guard; the check result is cached for half a second
        while await health(channel, "") != health_pb2.HealthCheckResponse.NOT_SERVING:
            await anyio.sleep(0.1)


# -- status.py -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "status"), [
    (InvalidInput("bad"), Status.INVALID_ARGUMENT),
    (ModelNotFound("bad"), Status.NOT_FOUND),
    (PayloadTooLarge("bad"), Status.RESOURCE_EXHAUSTED),
    (Overloaded("bad"), Status.RESOURCE_EXHAUSTED),
    (NotReady("bad"), Status.UNAVAILABLE),
    (Timeout("bad"), Status.DEADLINE_EXCEEDED),
    (ModelError("bad"), Status.INTERNAL),
])
def test_every_error_code_has_the_designed_status(error: HostdError, status: Status) -> None:
    with pytest.raises(GRPCError) as caught, grpc_errors():
        raise error
    assert caught.value.status is status
    assert caught.value.message == f"{error.code.value}: bad"


def test_the_status_table_covers_every_error_code() -> None:
    from hostd_grpc.status import STATUS

    assert set(STATUS) == set(ErrorCode)


class _Scalars(BaseModel):
    a: float
    n: int


def _one_row(datatype_a: str, shape: list[int], value_a: Any, field: str = "fp64_contents",
             n: tuple[str, str, Any] = ("INT64", "int64_contents", 3)) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype=datatype_a, shape=shape).contents.MergeFrom(
        oip.InferTensorContents(**{field: [value_a]}))
    request.inputs.add(name="n", datatype=n[0], shape=[1]).contents.MergeFrom(oip.InferTensorContents(**{n[1]: [n[2]]}))
    return request


@pytest.mark.parametrize("request_", [
    _one_row("FP64", [1], 5.1), _one_row("FP64", [1, 1], 5.1), _one_row("FP32", [1], 0.5, "fp32_contents"),
    _one_row("INT64", [1], 7, "int64_contents"), _one_row("FP64", [1], 1.0, n=("INT32", "int_contents", -4)),
], ids=["fp64", "fp64-column", "fp32", "int64-for-a-float", "int32"])
def test_the_one_row_fast_path_reads_what_the_general_path_reads(request_: oip.ModelInferRequest) -> None:
    specs = tensor_specs(_Scalars)
    fast = inference._scalar_row(request_, specs)
    assert fast is not None and fast == rows_from_arrays(inference.decode_inputs(request_), specs)


@pytest.mark.parametrize("request_", [
    _one_row("INT8", [1], 7, "int_contents"), _one_row("FP64", [2], 5.1), _one_row("BOOL", [1], True, "bool_contents"),
    _one_row("FP64", [], 5.1),
], ids=["narrow-int", "two-values-one-tensor", "bool", "no-shape"])
def test_anything_else_goes_the_general_way_which_names_the_problem(request_: oip.ModelInferRequest) -> None:
    assert inference._scalar_row(request_, tensor_specs(_Scalars)) is None


class _Outputs(BaseModel):
    label: str
    score: float
    count: int


@pytest.mark.parametrize("requested", [[], ["score"], ["label", "count"]], ids=["all", "one", "two"])
def test_the_one_row_reply_fast_path_writes_what_the_general_path_writes(requested: list[str]) -> None:
    request = _one_row("FP64", [1], 5.1)
    request.id = "r-1"
    result = Prediction("m", "1.0.0", [{"label": "Iris setosa", "score": 0.25, "count": 3}])
    specs = tensor_specs(_Outputs)
    fast = inference._scalar_reply(result, request, specs, requested)
    general = inference.encode_outputs(result, request, output_arrays(result.outputs, specs, requested))
    assert fast is not None and fast == general


@pytest.mark.parametrize("row", [
    {"label": "a", "score": True, "count": 3}, {"label": "a", "score": 1.0, "count": True},
    {"label": "a", "score": 1, "count": 3},
], ids=["bool-for-float", "bool-for-int", "int-for-float"])
def test_values_numpy_would_convert_go_the_general_way(row: dict[str, Any]) -> None:
    result = Prediction("m", "1.0.0", [row])
    assert inference._scalar_reply(result, _one_row("FP64", [1], 5.1), tensor_specs(_Outputs), []) is None


def test_two_rows_or_raw_contents_go_the_general_way() -> None:
    rows = [{"label": "a", "score": 1.0, "count": 3}] * 2
    specs = tensor_specs(_Outputs)
    assert inference._scalar_reply(Prediction("m", "1", rows), _one_row("FP64", [1], 5.1), specs, []) is None
    raw = _one_row("FP64", [1], 5.1)
    raw.raw_input_contents.append(b"\0" * 8)
    assert inference._scalar_reply(Prediction("m", "1", rows[:1]), raw, specs, []) is None
