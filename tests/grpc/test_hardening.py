"""The gRPC transport's defences (issue 13.5, 13.8, minor items), on a HostdServer in this process on
127.0.0.1, called by tritonclient.grpc: big requests decoded off the event loop, one Client per HTTP/2
connection, a cancelled call leaving the batcher, malformed ModelInfer requests named precisely."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from hostd_grpc import inference
from hostd_grpc.plugin import GrpcSettings
from hostd_grpc.server import HostdServer
from hostd_grpc.serving import build_services
from sklearn.datasets import load_iris
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from hostd.dataplane import DataPlane
from hostd.registry import Registry
from hostd.settings import HostSettings
from hostd.tasks import InFlight
from tests.support.e2e import PATIENCE_S

pytestmark = pytest.mark.anyio
LIMIT = 1 << 20
SETTINGS = {"models": [
    {"class_path": "iris_model.model:IrisModel"},
    {"class_path": "tests.support.toy:EchoModel"},
    # One worker, two requests per client at most: calls wait in the model for the file `gate` names.
    {"class_path": "tests.support.toy:GatedEcho", "configuration": {"name": "held"}, "workers": {"count": 1},
     "max_pending": 8, "max_pending_per_client": 2, "timeout_ms": 40_000},
]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[HostdServer]:
    plane = DataPlane(Registry.from_settings(HostSettings.model_validate(SETTINGS)))
    plane.set_ready()
    server = HostdServer(build_services(plane, GrpcSettings(), InFlight()), max_connections=100,
                         max_request_bytes=LIMIT)
    server.plane = plane  # type: ignore[attr-defined]  # for the tests that look at pending counts
    await server.start("127.0.0.1", 0)
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]
    server.target = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def target(server: HostdServer) -> str:
    return str(server.target)  # type: ignore[attr-defined]


def tensor(name: str, data: np.ndarray, datatype: str) -> triton.InferInput:
    infer_input = triton.InferInput(name, list(data.shape), datatype)
    infer_input.set_data_from_numpy(data)
    return infer_input


def iris_species(target: str, rows: np.ndarray) -> list[str]:
    with triton.InferenceServerClient(url=target) as client:
        result = client.infer("iris_model", [tensor("input__0", rows.astype(np.float32), "FP32")],
                              client_timeout=120)
    return [value.decode() for value in result.as_numpy("species")]


async def test_a_request_at_the_limit_is_decoded_while_other_clients_are_answered(
        target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The big request's decoding waits until another client's request has been answered: on the
    # event loop (before the fix) that answer cannot come, and the wait gives up after PATIENCE_S.
    decoding, answered = threading.Event(), threading.Event()
    gate_opened: list[bool] = []
    decode_inputs = inference.decode_inputs

    def gated(request: Any) -> dict[str, np.ndarray]:
        if request.raw_input_contents and len(request.raw_input_contents[0]) > LIMIT // 2:
            decoding.set()
            gate_opened.append(answered.wait(PATIENCE_S))
        return decode_inputs(request)

    monkeypatch.setattr(inference, "decode_inputs", gated)
    rows = (LIMIT - 4096) // 16  # [rows, 4] FP32 and the request's other fields: just under 1 MiB
    big = np.resize(load_iris().data, (rows, 4))

    def small_client() -> list[str]:
        assert decoding.wait(PATIENCE_S), "the big request was never decoded"
        species = iris_species(target, load_iris().data[[0, 50, 100]])
        answered.set()
        return species

    big_call = asyncio.create_task(asyncio.to_thread(iris_species, target, big))
    small_species = await asyncio.to_thread(small_client)
    big_species = await big_call
    assert gate_opened == [True], "no other client was answered while the big request was decoded"
    assert small_species == ["Iris setosa", "Iris versicolor", "Iris virginica"]
    assert len(big_species) == rows and big_species[:3] == ["Iris setosa"] * 3


# -- one Client per connection; a cancelled call leaves the queue ------------------------------------


def held(gate: Any, x: float = 1.0) -> service_pb2.ModelInferRequest:
    tensor_type = service_pb2.ModelInferRequest.InferInputTensor
    return service_pb2.ModelInferRequest(model_name="held", inputs=[
        tensor_type(name="x", datatype="FP64", shape=[1], contents=service_pb2.InferTensorContents(fp64_contents=[x])),
        tensor_type(name="gate", datatype="BYTES", shape=[1],
                    contents=service_pb2.InferTensorContents(bytes_contents=[str(gate).encode()]))])


async def until(condition: Any, what: str) -> None:
    for _ in range(int(PATIENCE_S / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} (waited {PATIENCE_S} s)")


async def test_each_connection_is_one_client_held_to_its_share_and_a_cancelled_call_leaves_the_queue(
        server: HostdServer, target: str, tmp_path: Any) -> None:
    gate = tmp_path / "gate"
    served = server.plane.model("held")  # type: ignore[attr-defined]
    # grpcio shares one connection between channels to one target unless each has its own pool.
    own = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(target, own) as first, grpc.insecure_channel(target, own) as second:
        stub, other = (service_pb2_grpc.GRPCInferenceServiceStub(chan) for chan in (first, second))
        running, queued = stub.ModelInfer.future(held(gate, 1)), stub.ModelInfer.future(held(gate, 2))
        await until(lambda: served.pending == 2, "the first connection's two calls were not admitted")
        # A third call on the same connection is over its share (2) and refused at once...
        error = await asyncio.to_thread(stub_error_on, stub, held(gate, 3))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details().startswith("OVERLOADED: this client already has 2 requests pending for model 'held'")
        # ...while another connection is another client, admitted.
        third = other.ModelInfer.future(held(gate, 4))
        await until(lambda: served.pending == 3, "the second connection's call was not admitted")
        # The client cancels its queued call (RST_STREAM): the call leaves the queue, not reaching the model.
        assert queued.cancel()
        await until(lambda: served.pending == 2, "the cancelled call stayed pending")
        gate.touch()
        replies = [await asyncio.to_thread(call.result, PATIENCE_S) for call in (running, third)]
    assert [reply.outputs[0].contents.fp64_contents[0] for reply in replies] == [2.0, 8.0]
    assert served.pending == 0


def stub_error_on(stub: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=PATIENCE_S)
    return caught.value


# -- malformed ModelInfer requests -------------------------------------------------------------------


def infer_error(target: str, inputs: list[triton.InferInput]) -> InferenceServerException:
    with triton.InferenceServerClient(url=target) as client, pytest.raises(InferenceServerException) as caught:
        client.infer("echo", inputs, client_timeout=PATIENCE_S)
    return caught.value


async def test_an_input_tensor_given_twice_is_invalid_argument(target: str) -> None:
    inputs = [tensor("x", np.array([1.0]), "FP64"), tensor("x", np.array([2.0]), "FP64")]
    error = await asyncio.to_thread(infer_error, target, inputs)
    assert (error.status(), error.message()) == (
        "StatusCode.INVALID_ARGUMENT", "INVALID_INPUT: input tensor 'x' is given twice")


def stub_error(target: str, request: service_pb2.ModelInferRequest) -> grpc.RpcError:
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as caught:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=PATIENCE_S)
    return caught.value


async def test_contents_and_raw_input_contents_together_are_invalid_argument(target: str) -> None:
    tensor_type = service_pb2.ModelInferRequest.InferInputTensor
    request = service_pb2.ModelInferRequest(
        model_name="echo",
        inputs=[tensor_type(name="x", datatype="FP64", shape=[1],
                            contents=service_pb2.InferTensorContents(fp64_contents=[1.0]))],
        raw_input_contents=[np.array([2.0]).tobytes()])
    error = await asyncio.to_thread(stub_error, target, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("INVALID_INPUT: input 'x' has values in contents and the request has "
                               "raw_input_contents: use one or the other")


async def test_a_connection_refused_again_and_again_is_held_back(server: HostdServer, target: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # As over HTTP: a client that ignores RESOURCE_EXHAUSTED and asks again at once gets its next
    # refusal only after a pause, so the loop is not spent answering refusals.
    from hostd.errors import Overloaded

    monkeypatch.setattr("hostd.refusals.FIRST_PAUSE_S", 30.0)  # long: the client's deadline comes first
    monkeypatch.setattr("hostd.refusals.LONGEST_PAUSE_S", 30.0)
    plane: DataPlane = server.plane  # type: ignore[attr-defined]
    monkeypatch.setattr(plane, "refusal", lambda *args, **kwargs: Overloaded("model 'iris_model' is busy"))
    rows = load_iris().data[:1].astype(np.float32)

    def twice() -> list[str]:
        statuses = []
        with triton.InferenceServerClient(url=target) as client:  # one connection
            for _ in range(2):
                try:
                    client.infer("iris_model", [tensor("input__0", rows, "FP32")], client_timeout=5)
                except InferenceServerException as exc:
                    statuses.append(str(exc.status()))
        return statuses

    first, second = await asyncio.to_thread(twice)
    assert first == "StatusCode.RESOURCE_EXHAUSTED"  # at once
    assert second == "StatusCode.DEADLINE_EXCEEDED"  # held back past the client's deadline
