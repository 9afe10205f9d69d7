"""hostd run, served over real gRPC sockets: tritonclient.grpc, plain grpcio, `hostd proto`, errors, shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf import descriptor_pb2
from grpclib.health.v1 import health_pb2
from grpclib.reflection.v1alpha import reflection_pb2
from sklearn.datasets import load_diabetes, load_digits
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import HOSTD, ROOT, HostdProcess
from tests.support.e2e import IRIS_FIELDS, REAL_MODELS, Start, echo, iris_rows, metric, pending, wait_for
from tests.support.protoc import import_generated, protoc

pytestmark = pytest.mark.e2e

OIP_PROTO = ROOT / "plugins" / "hostd_grpc" / "proto" / "grpc_predict_v2.proto"
SERVICE = "inference.GRPCInferenceService"
TOY_MODELS = [
    echo(workers=16),  # y = 2x, text upper-cased; waits for the file `gate` names; raises when fail is true
    # One worker: a call to slow runs only once the one before it has left the model.
    echo(workers=1, configuration={"name": "slow"}),
    {"class_path": "tests.support.toy_grpc:UntypeableDict"},  # no typed service: weights is a dict
    {"class_path": "tests.support.toy_grpc:ProfileModel"},  # nested messages in its typed service
]


@dataclass
class GrpcHostd:
    process: HostdProcess

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.process.transports['grpc']['port']}"

    def metric(self, line_prefix: str) -> float:
        return metric(self.process.url, line_prefix)


@pytest.fixture
def start_grpc(start_hostd: Start) -> Callable[..., GrpcHostd]:
    def start(models: list[dict[str, Any]]) -> GrpcHostd:
        return GrpcHostd(start_hostd({"models": models, "transports": {"http": {}, "grpc": {}}}))

    return start


@pytest.fixture(scope="module")
def real(start_shared_hostd: Start) -> GrpcHostd:
    """The three real models and the toys (starts in ~3 s), shared by the tests that only predict."""
    return GrpcHostd(start_shared_hostd({"models": REAL_MODELS + TOY_MODELS, "transports": {"http": {}, "grpc": {}}}))


@pytest.fixture
def toys(start_grpc: Callable[..., GrpcHostd]) -> GrpcHostd:
    """Only the toys (starts in ~1 s)."""
    return start_grpc(TOY_MODELS)


@contextmanager
def triton_client(server: GrpcHostd) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url=server.target) as tc:
        yield tc


@pytest.fixture(scope="module")
def client(real: GrpcHostd) -> Iterator[triton.InferenceServerClient]:
    with triton_client(real) as tc:
        yield tc


@pytest.fixture
def toy_client(toys: GrpcHostd) -> Iterator[triton.InferenceServerClient]:
    with triton_client(toys) as tc:
        yield tc


@contextmanager
def channel(target: str) -> Iterator[grpc.Channel]:
    chan = grpc.insecure_channel(target)
    try:
        yield chan
    finally:
        chan.close()


def tensor(name: str, data: np.ndarray, datatype: str) -> triton.InferInput:
    infer_input = triton.InferInput(name, list(data.shape), datatype)
    infer_input.set_data_from_numpy(data)
    return infer_input


def echo_works(client: triton.InferenceServerClient) -> bool:
    result = client.infer("echo", [tensor("x", np.array([21.0]), "FP64")])
    return bool(result.as_numpy("y").tolist() == [42.0])


# -- tritonclient.grpc ------------------------------------------------------------------------------------


def test_tritonclient_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris_model")
    assert client.is_model_ready("digits_model", model_version="1.0.0")
    server_metadata = client.get_server_metadata(as_json=True)
    assert server_metadata["name"] == "hostd" and server_metadata["version"]

    iris = client.get_model_metadata("iris_model", as_json=True)
    assert (iris["name"], iris["versions"], iris["platform"]) == ("iris_model", ["1.0.0"], "hostd")
    assert [(t["name"], t["datatype"], t["shape"]) for t in iris["inputs"]] == [
        (name, "FP64", ["-1"]) for name in IRIS_FIELDS]  # protobuf's JSON writes int64 as strings
    assert iris["outputs"] == [{"name": "species", "datatype": "BYTES", "shape": ["-1"]}]
    digits = client.get_model_metadata("digits_model", as_json=True)
    assert digits["inputs"] == [{"name": "image", "datatype": "INT64", "shape": ["-1", "8", "8"]}]


def test_tritonclient_is_model_ready_is_false_for_an_unknown_model(toy_client: triton.InferenceServerClient) -> None:
    # As over hostd's HTTP transport and in Triton: readiness is a question, not an error.
    assert not toy_client.is_model_ready("nope")
    assert not toy_client.is_model_ready("echo", model_version="9.9")
    assert toy_client.is_model_ready("echo")


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_tritonclient_infers_a_batch_of_iris_rows(client: triton.InferenceServerClient, datatype: str) -> None:
    data, species = iris_rows()
    dtype = np.float32 if datatype == "FP32" else np.float64
    inputs = [tensor(name, data[:, i].astype(dtype), datatype) for i, name in enumerate(IRIS_FIELDS)]
    result = client.infer("iris_model", inputs, request_id="batch-5")
    assert result.get_response().id == "batch-5"
    assert [value.decode() for value in result.as_numpy("species")] == species


def test_tritonclient_infers_iris_from_one_rows_by_columns_tensor(client: triton.InferenceServerClient) -> None:
    data, species = iris_rows()
    result = client.infer("iris_model", [tensor("input__0", data.astype(np.float32), "FP32")])
    assert [value.decode() for value in result.as_numpy("species")] == species


def test_tritonclient_infers_digits_from_an_int64_image_tensor(client: triton.InferenceServerClient) -> None:
    digits = load_digits()
    images = digits.images[:12].astype(np.int64)
    result = client.infer("digits_model", [tensor("image", images, "INT64")],
                          outputs=[triton.InferRequestedOutput("digit"), triton.InferRequestedOutput("probability")])
    assert result.as_numpy("digit").tolist() == digits.target[:12].tolist()
    probability = result.as_numpy("probability")
    assert probability.dtype == np.float64 and probability.shape == (12,)
    assert ((probability > 0) & (probability <= 1)).all()


def test_tritonclient_infers_diabetes_rows(real: GrpcHostd, client: triton.InferenceServerClient) -> None:
    diabetes = load_diabetes(scaled=False)
    rows = diabetes.data[:4]
    result = client.infer("diabetes_model", [tensor("input__0", rows, "FP64")],
                          outputs=[triton.InferRequestedOutput("progression"), triton.InferRequestedOutput("std")])
    assert result.as_numpy("sample") is None  # only what was asked for
    progression = result.as_numpy("progression")
    assert progression.shape == (4,) and (result.as_numpy("std") > 0).all()
    # Row 2 over gRPC is row 2 predicted alone over REST.
    alone = httpx.post(f"{real.process.url}/api/models/diabetes_model/prediction",
                       json=dict(zip(diabetes.feature_names, rows[2].tolist(), strict=True)), timeout=10)
    assert alone.status_code == 200, alone.text
    assert progression[2] == pytest.approx(alone.json()["progression"])


def test_tritonclient_bytes_tensors_in_and_out(toy_client: triton.InferenceServerClient) -> None:
    text = np.array([b"abc", "ünï".encode(), b""], dtype=np.object_)
    result = toy_client.infer("echo", [tensor("x", np.array([1.0, 2.5, -3.0]), "FP64"), tensor("text", text, "BYTES")])
    assert result.as_numpy("y").tolist() == [2.0, 5.0, -6.0]
    assert [value.decode() for value in result.as_numpy("text")] == ["ABC", "ÜNÏ", ""]


def test_a_model_without_a_typed_service_still_answers_over_oip(toy_client: triton.InferenceServerClient) -> None:
    weights = np.array([json.dumps({"a": 1.5, "b": 2}).encode()], dtype=np.object_)
    result = toy_client.infer("dict_model", [tensor("x", np.array([2.0]), "FP64"), tensor("weights", weights, "BYTES")])
    assert result.as_numpy("y").tolist() == [7.0]


# -- errors: the right status, a message naming the problem, and the daemon keeps serving ---------------


def bytes_for_x() -> list[triton.InferInput]:
    return [tensor("x", np.array([b"1.0"], dtype=np.object_), "BYTES")]


def two_values_shaped_three() -> list[triton.InferInput]:
    x = tensor("x", np.array([1.0, 2.0]), "FP64")
    x.set_shape([3])  # tritonclient checks the shape only when data is set
    return [x]


def asked_to_fail() -> list[triton.InferInput]:
    return [tensor("x", np.array([1.0]), "FP64"), tensor("fail", np.array([True]), "BOOL")]


def one_x() -> list[triton.InferInput]:
    return [tensor("x", np.array([1.0]), "FP64")]


@pytest.mark.parametrize(("model", "version", "inputs", "status", "message"), [
    ("echo", "", bytes_for_x, "StatusCode.INVALID_ARGUMENT",
     "INVALID_INPUT: input 'x' was sent as BYTES; the model expects FP64"),
    ("echo", "", two_values_shaped_three, "StatusCode.INVALID_ARGUMENT",
     "INVALID_INPUT: input 'x': 2 values do not fill shape [3] (FP64)"),
    ("nope", "", one_x, "StatusCode.NOT_FOUND", "MODEL_NOT_FOUND: model 'nope' is not served here"),
    ("echo", "9.9", one_x, "StatusCode.NOT_FOUND", "MODEL_NOT_FOUND: model 'echo' has no version '9.9'"),
    ("echo", "", asked_to_fail, "StatusCode.INTERNAL", "MODEL_ERROR: model 'echo' failed: RuntimeError: asked to fail"),
], ids=["bytes-for-a-number", "wrong-shape", "unknown-model", "unknown-version", "model-raises"])
def test_bad_requests_get_the_right_status_and_the_daemon_keeps_serving(
        toy_client: triton.InferenceServerClient, model: str, version: str,
        inputs: Callable[[], list[triton.InferInput]], status: str, message: str) -> None:
    tensors = inputs()
    with pytest.raises(InferenceServerException) as caught:
        toy_client.infer(model, tensors, model_version=version)
    assert caught.value.status() == status
    assert caught.value.message().startswith(message), caught.value.message()
    assert echo_works(toy_client)


def test_garbage_bytes_are_invalid_argument(toys: GrpcHostd, toy_client: triton.InferenceServerClient) -> None:
    with channel(toys.target) as chan:
        model_infer = chan.unary_unary(f"/{SERVICE}/ModelInfer", request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as caught:
            model_infer(b"this is not a protobuf message", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("INVALID_INPUT: request is not a valid ModelInferRequest")
    assert echo_works(toy_client)


def held_inputs(gate: Path) -> list[triton.InferInput]:
    """x, and a gate (see GatedEcho): the call stays in the model until the file exists."""
    return [tensor("x", np.array([1.0]), "FP64"), tensor("gate", np.array([str(gate).encode()], dtype=np.object_),
                                                      "BYTES")]


def test_a_client_deadline_shorter_than_timeout_ms(toys: GrpcHostd, toy_client: triton.InferenceServerClient,
                                                   tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    try:
        with pytest.raises(InferenceServerException) as caught:
            toy_client.infer("slow", held_inputs(gate), client_timeout=1)  # slow's timeout_ms is 40 s
        assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED", repr(caught.value.message())
        # The server gave up at the client's deadline too: the request is no longer pending, while
        # the model still holds it (and would until the gate opens or timeout_ms, 40 s, is up).
        wait_for(lambda: toys.metric('hostd_pending{model="slow"}') == 0,
                 "the server kept waiting after the client's deadline", timeout=20)
    finally:
        gate.touch()
    assert echo_works(toy_client)


def test_a_missed_client_deadline_is_counted_as_a_timeout(toys: GrpcHostd, toy_client: triton.InferenceServerClient,
                                                         tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # The client's cancel (RST_STREAM) for its deadline and hostd's own timer (set from grpc-timeout)
    # race; a cancel that comes within DEADLINE_SLACK_S of that timer is the deadline: TIMEOUT.
    with pytest.raises(InferenceServerException) as caught:
        toy_client.infer("slow", held_inputs(gate), client_timeout=1)
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    timeouts = 'hostd_requests_total{code="TIMEOUT",model="slow",transport="grpc"}'
    successes = 'hostd_requests_total{code="OK",model="slow",transport="grpc"}'
    wait_for(lambda: toys.metric(timeouts) >= 1, "the missed deadline was never counted")
    gate.touch()
    # slow has one worker: this call runs after the held one has finished in the model, so by its
    # reply a late success of the held one would have been counted.
    assert toy_client.infer("slow", one_x()).as_numpy("y").tolist() == [2.0]
    assert (toys.metric(timeouts), toys.metric(successes)) == (1, 1)


# -- a plain grpcio client compiled from the shipped OIP proto ------------------------------------------

PLAIN_CLIENT = '''
import json, sys
import grpc
import grpc_predict_v2_pb2 as pb
import grpc_predict_v2_pb2_grpc as pb_grpc

Tensor = pb.ModelInferRequest.InferInputTensor
request = json.loads(sys.argv[2])
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    inputs = []
    for t in request["inputs"]:
        values = [v.encode() for v in t["values"]] if t["field"] == "bytes_contents" else t["values"]
        inputs.append(Tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"],
                             contents=pb.InferTensorContents(**{t["field"]: values})))
    reply = stub.ModelInfer(pb.ModelInferRequest(model_name=request["model"], inputs=inputs), timeout=10)
    outputs = {}
    for output in reply.outputs:
        # Every contents field that holds values (bytes decoded, to print as JSON).
        contents = {}
        for field in output.contents.DESCRIPTOR.fields:
            values = getattr(output.contents, field.name)
            if values:
                contents[field.name] = [v.decode() if isinstance(v, bytes) else v for v in values]
        outputs[output.name] = {"datatype": output.datatype, "shape": list(output.shape), "contents": contents}
    print(json.dumps({"model": reply.model_name, "outputs": outputs, "raw": len(reply.raw_output_contents)}))
'''


@pytest.fixture
def plain_client(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Run a grpcio client built by stock protoc from plugins/hostd_grpc/proto/grpc_predict_v2.proto.

    It runs in its own interpreter: tritonclient registers the same `inference.*` messages in this
    process's protobuf pool, so a second set cannot be imported here.
    """
    out = tmp_path / "oip"
    protoc(OIP_PROTO, out)
    (out / "client.py").write_text(PLAIN_CLIENT)

    def run(target: str, model: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        done = subprocess.run([sys.executable, str(out / "client.py"), target,
                               json.dumps({"model": model, "inputs": inputs})],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    return run


def test_plain_grpcio_client_sends_and_gets_typed_contents(real: GrpcHostd,
                                                           plain_client: Callable[..., dict[str, Any]]) -> None:
    data, species = iris_rows()
    inputs = [{"name": name, "datatype": "FP64", "shape": [len(data)], "field": "fp64_contents",
               "values": data[:, i].tolist()} for i, name in enumerate(IRIS_FIELDS)]
    reply = plain_client(real.target, "iris_model", inputs)
    assert reply["raw"] == 0  # typed in, typed out
    assert reply["outputs"] == {"species": {"datatype": "BYTES", "shape": [5], "contents": {"bytes_contents": species}}}

    digits = load_digits()
    image = {"name": "image", "datatype": "INT64", "shape": [3, 8, 8], "field": "int64_contents",
             "values": digits.images[:3].astype(int).reshape(-1).tolist()}
    reply = plain_client(real.target, "digits_model", [image])
    assert reply["outputs"]["digit"]["contents"] == {"int64_contents": digits.target[:3].tolist()}
    assert reply["outputs"]["probability"]["datatype"] == "FP64"
    assert len(reply["outputs"]["probability"]["contents"]["fp64_contents"]) == 3

    echo = [{"name": "x", "datatype": "FP32", "shape": [2], "field": "fp32_contents", "values": [1.5, -4.0]},
            {"name": "text", "datatype": "BYTES", "shape": [2], "field": "bytes_contents", "values": ["ab", "cd"]}]
    reply = plain_client(real.target, "echo", echo)
    assert reply["outputs"]["y"]["contents"] == {"fp64_contents": [3.0, -8.0]}
    assert reply["outputs"]["text"]["contents"] == {"bytes_contents": ["AB", "CD"]}


# -- `hostd proto`: compile the typed services with stock protoc and call them --------------------------


def hostd_proto(config: Path, output: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HOSTD, "proto", str(config), "-o", str(output)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)


def test_hostd_proto_writes_files_stock_protoc_compiles_and_predict_answers(real: GrpcHostd,
                                                                            tmp_path: Path) -> None:
    config = tmp_path / "typed.yaml"
    config.write_text(json.dumps({"models": [*REAL_MODELS, {"class_path": "tests.support.toy_grpc:ProfileModel"}]}))
    done = hostd_proto(config, tmp_path / "protos")
    assert done.returncode == 0, done.stderr
    written = [line.split("\t") for line in done.stdout.splitlines()]
    assert [(Path(path).name, rpc) for path, rpc in written] == [
        ("diabetes_model.proto", "hostd.models.diabetes_model.DiabetesModel/Predict"),
        ("digits_model.proto", "hostd.models.digits_model.DigitsModel/Predict"),
        ("iris_model.proto", "hostd.models.iris_model.IrisModel/Predict"),
        ("profile.proto", "hostd.models.profile.Profile/Predict"),
    ]
    assert all(Path(path).is_file() for path, _ in written)

    iris_pb, iris_grpc = import_generated(tmp_path / "protos" / "iris_model.proto", tmp_path / "gen")
    digits_pb, digits_grpc = import_generated(tmp_path / "protos" / "digits_model.proto", tmp_path / "gen")
    profile_pb, profile_grpc = import_generated(tmp_path / "protos" / "profile.proto", tmp_path / "gen")
    protoc(tmp_path / "protos" / "diabetes_model.proto", tmp_path / "gen")

    data, species = iris_rows()
    digits = load_digits()
    with channel(real.target) as chan:
        iris = iris_grpc.IrisModelStub(chan)
        for row, expected in zip(data, species, strict=True):
            reply = iris.Predict(iris_pb.IrisModelInput(**dict(zip(IRIS_FIELDS, row.tolist(), strict=True))),
                                 timeout=10)
            assert reply.species == expected

        digits_stub = digits_grpc.DigitsModelStub(chan)
        for index in range(4):
            rows = [digits_pb.DigitsModelInput.ImageRow(values=row) for row in digits.images[index].astype(int)]
            reply = digits_stub.Predict(digits_pb.DigitsModelInput(image=rows), timeout=10)
            assert reply.HasField("digit") and reply.digit == digits.target[index]
            assert 0 < reply.probability <= 1

        # A field left out is reported by name, not read as 0.0; a value out of range likewise.
        with pytest.raises(grpc.RpcError) as caught:
            iris.Predict(iris_pb.IrisModelInput(sepal_length=5.1, sepal_width=3.5, petal_length=1.4), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "petal_width: Field required" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            digits_stub.Predict(digits_pb.DigitsModelInput(image=rows[:7]), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "image" in caught.value.details() and "8 items" in caught.value.details()
        assert iris.Predict(iris_pb.IrisModelInput(**dict(zip(IRIS_FIELDS, data[0].tolist(), strict=True))),
                            timeout=10).species == species[0]

        # Nested messages, an enum as its string, repeated strings, rows of doubles; age left out.
        profile = profile_pb.ProfileInput(
            name="Ada", kind="person", tags=["math"], address=profile_pb.Address(street="Square", number=12),
            previous=[profile_pb.Address(street="Ockham", number=2)],
            matrix=[profile_pb.ProfileInput.MatrixRow(values=[1.0, 2.5]), profile_pb.ProfileInput.MatrixRow()])
        reply = profile_grpc.ProfileStub(chan).Predict(profile, timeout=10)
        assert (reply.summary, reply.kind, list(reply.tags), list(reply.row_sums)) == (
            "Ada (person) at 12 Square, 1 previous", "person", ["MATH"], [3.5, 0.0])
        assert (reply.address.street, reply.address.number) == ("Square", 12)
        assert not reply.HasField("age")


def test_hostd_proto_refuses_a_model_protobuf_cannot_describe(tmp_path: Path) -> None:
    config = tmp_path / "untypeable.yaml"
    config.write_text(json.dumps({"models": [{"class_path": "tests.support.toy_grpc:UntypeableDict"}]}))
    done = hostd_proto(config, tmp_path / "protos")
    assert done.returncode != 0
    assert "dict_model" in done.stderr and "'DictInput.weights'" in done.stderr


# -- health and reflection ------------------------------------------------------------------------------


def test_health_check_says_serving(toys: GrpcHostd) -> None:
    with channel(toys.target) as chan:
        check = chan.unary_unary("/grpc.health.v1.Health/Check",
                                 request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                 response_deserializer=health_pb2.HealthCheckResponse.FromString)
        for service in ("", SERVICE, "hostd.models.echo.Echo"):
            assert check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as caught:
            check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_oip_and_typed_services(real: GrpcHostd) -> None:
    Request = reflection_pb2.ServerReflectionRequest
    with channel(real.target) as chan:
        info = chan.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                  request_serializer=Request.SerializeToString,
                                  response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        listed, described = list(info(iter([
            Request(list_services=""), Request(file_containing_symbol="hostd.models.digits_model.DigitsModel"),
        ]), timeout=5))
    services = {service.name for service in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "hostd.models.iris_model.IrisModel",
            "hostd.models.digits_model.DigitsModel", "hostd.models.diabetes_model.DiabetesModel",
            "hostd.models.echo.Echo"} <= services
    assert not any("dict_model" in name for name in services)  # protobuf cannot describe it
    (raw,) = described.file_descriptor_response.file_descriptor_proto
    file = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert file.package == "hostd.models.digits_model"
    assert [m.name for m in file.message_type] == ["DigitsModelInput", "DigitsModelOutput"]
    assert [m.name for m in file.message_type[0].nested_type] == ["ImageRow"]


# -- graceful shutdown -------------------------------------------------------------------------------------


def test_sigterm_lets_every_in_flight_call_finish(toys: GrpcHostd, tmp_path: Path) -> None:
    Tensor = service_pb2.ModelInferRequest.InferInputTensor
    gate = tmp_path / "gate"  # the calls stay in the model until the test creates it

    def request(x: float) -> service_pb2.ModelInferRequest:
        return service_pb2.ModelInferRequest(model_name="echo", inputs=[
            Tensor(name="x", datatype="FP64", shape=[1], contents=service_pb2.InferTensorContents(fp64_contents=[x])),
            Tensor(name="gate", datatype="BYTES", shape=[1],
                   contents=service_pb2.InferTensorContents(bytes_contents=[str(gate).encode()]))])

    with channel(toys.target) as chan:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(chan)
        futures = [stub.ModelInfer.future(request(float(i)), timeout=60) for i in range(10)]
        wait_for(lambda: pending(toys.process.url) >= 10, "the ten calls were never all in flight")
        toys.process.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in toys.process.output(), "hostd never began to drain")
        assert not any(future.done() for future in futures)
        gate.touch()
        replies = [future.result(timeout=60) for future in futures]
    assert [list(reply.outputs[0].contents.fp64_contents) for reply in replies] == [[2.0 * i] for i in range(10)]
    assert toys.process.proc.wait(timeout=15) == 0, toys.process.output()
