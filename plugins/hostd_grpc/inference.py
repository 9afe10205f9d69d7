"""inference.GRPCInferenceService: the Open Inference Protocol v2 over gRPC (KServe v2 / Triton).

Tensors arrive either in ``raw_input_contents`` (what tritonclient sends) or in typed
``contents``; the reply uses the same form the request used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from grpclib.const import Handler

from hostd import __version__
from hostd.auth import Scope
from hostd.dataplane import DataPlane, Prediction, new_request_id
from hostd.errors import InvalidInput, ModelNotFound
from hostd.tasks import InFlight
from hostd.tensors import (
    NUMERIC,
    TensorSpec,
    array_from_bytes,
    array_from_values,
    array_to_bytes,
    check_datatype,
    check_outputs,
    output_arrays,
    rows_from_arrays,
    shaped,
    tensor_specs,
)
from hostd_grpc import oip as pb
from hostd_grpc.unary import DEFAULT_LIMITS, Call, Guarded, Needs, RequestLimits, unary_handler

SERVICE = "inference.GRPCInferenceService"
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


class InferenceService:
    def __init__(self, dataplane: DataPlane, in_flight: InFlight, limits: RequestLimits = DEFAULT_LIMITS) -> None:
        self.dataplane = dataplane
        self.in_flight = in_flight
        self.limits = limits

    def __mapping__(self) -> dict[str, Handler]:
        read, infer, admin = Scope.READ, Scope.INFER, Scope.ADMIN
        rpcs: dict[str, tuple[Any, type, type, Needs, str | None]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse, _server(read), "health"),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse, _server(read), "health"),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse,
                           lambda r: (read, r.name), "health"),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse,
                               _server(read), None),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse,
                              lambda r: (read, r.name), None),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse,
                           lambda r: (infer, r.model_name), None),
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse,
                                _server(read), None),
            "RepositoryModelLoad": (self.load, pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse,
                                    lambda r: (admin, r.model_name), None),
            "RepositoryModelUnload": (self.unload, pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse,
                                      lambda r: (admin, r.model_name), None),
        }
        return {f"/{SERVICE}/{name}": unary_handler(respond, request, reply, self.in_flight, self.limits,
                                                    Guarded(self.dataplane, needs, open_as))
                for name, (respond, request, reply, needs, open_as) in rpcs.items()}

    async def server_live(self, request: pb.ServerLiveRequest, call: Call) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, call: Call) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    async def model_ready(self, request: pb.ModelReadyRequest, call: Call) -> pb.ModelReadyResponse:
        # Triton's contract: an unknown model is "not ready", not an error.
        try:
            served = self.dataplane.model(request.name, request.version or None)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.dataplane.ready and served.settings.create_endpoint)

    async def server_metadata(self, request: pb.ServerMetadataRequest,
                              call: Call) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="hostd", version=__version__, extensions=["model_repository"])

    async def repository_index(self, request: pb.RepositoryIndexRequest, call: Call) -> pb.RepositoryIndexResponse:
        principal = call.principal
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**entry)
                                                  for entry in self.dataplane.repository_index(request.ready)
                                                  if principal is None or principal.sees(entry["name"])])

    async def load(self, request: pb.RepositoryModelLoadRequest, call: Call) -> pb.RepositoryModelLoadResponse:
        await self.dataplane.admin().load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def unload(self, request: pb.RepositoryModelUnloadRequest, call: Call) -> pb.RepositoryModelUnloadResponse:
        await self.dataplane.admin().unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def model_metadata(self, request: pb.ModelMetadataRequest,
                             call: Call) -> pb.ModelMetadataResponse:
        served = self.dataplane.model(request.name, request.version or None)
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=[m.version for m in self.dataplane.models() if m.name == served.name],
            platform="hostd",
            inputs=[_tensor_metadata(spec) for spec in tensor_specs(served.model.input_schema)],
            outputs=[_tensor_metadata(spec) for spec in tensor_specs(served.model.output_schema)],
        )

    async def model_infer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:
        # ``served`` gives the tensors to decode; the data plane picks the version that answers (the one
        # asked for, else by routing: a reload or a canary may have changed it meanwhile).
        version = request.model_version or None
        # Refused now (not served, overloaded, not ready) is refused, and logged, before the tensors are decoded.
        request_id = request.id or new_request_id()  # the reply's id: the client's, or one made up
        refused = self.dataplane.refusal(request.model_name, version, transport="grpc", client=call.client,
                                         request_id=request_id)
        if refused is not None:
            raise refused
        served = self.dataplane.model(request.model_name, version)
        output_specs = tensor_specs(served.model.output_schema)
        requested = [output.name for output in request.outputs]
        with self.dataplane.refusing("grpc", served.name):
            check_outputs(requested, output_specs)
            rows = await call.run(decode_rows, request, tensor_specs(served.model.input_schema))
        result = await self.dataplane.predict_many(served.name, rows, version, transport="grpc",
                                                   deadline_s=call.deadline_s, client=call.client,
                                                   request_id=request_id, use_cache=_use_cache(request))
        return await call.run(_reply, result, request, output_specs, requested)


def _use_cache(request: pb.ModelInferRequest) -> bool:
    """False if the request's parameters say ``cache: false`` (answer from the model, not its cache)."""
    if "cache" not in request.parameters:
        return True
    parameter = request.parameters["cache"]
    if parameter.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidInput("the 'cache' parameter must be a bool_param")
    return bool(parameter.bool_param)


def _answer(result: Prediction, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """A reply with the request's id, and whether the cache answered it (for a model with a cache)."""
    response = pb.ModelInferResponse(model_name=result.model, model_version=result.version,
                                     id=result.request_id or request.id)
    if result.cached is not None:
        response.parameters["cached"].bool_param = result.cached
    return response


def _server(scope: Scope) -> Needs:
    """A call about the server, naming no model."""
    return lambda request: (scope, None)


def decode_rows(request: pb.ModelInferRequest, specs: list[TensorSpec]) -> list[dict[str, Any]]:
    return _scalar_row(request, specs) or rows_from_arrays(decode_inputs(request), specs)


#: Datatypes whose contents field holds exactly their values (no narrowing to check, as INT8 needs).
EXACT_CONTENTS = {"FP64": "fp64_contents", "FP32": "fp32_contents", "INT64": "int64_contents",
                  "INT32": "int_contents"}
ONE_ROW_SHAPES = ([1], [1, 1])


def _scalar_row(request: pb.ModelInferRequest, specs: list[TensorSpec]) -> list[dict[str, Any]] | None:
    """The most common request, one row of numbers sent in ``contents``, read without numpy (an
    eighth of a gRPC call's time went to building and unpacking arrays of one value); None for
    anything else, which the general path decodes, naming what is wrong."""
    if request.raw_input_contents or not request.inputs:
        return None
    by_name = {spec.name: spec for spec in specs}
    row: dict[str, Any] = {}
    for tensor in request.inputs:
        spec, field = by_name.get(tensor.name), EXACT_CONTENTS.get(tensor.datatype)
        if (spec is None or field is None or spec.shape or spec.datatype not in NUMERIC or tensor.name in row
                or list(tensor.shape) not in ONE_ROW_SHAPES):
            return None
        values = getattr(tensor.contents, field)
        if len(values) != 1:
            return None
        row[tensor.name] = values[0]
    return [row]


def _reply(result: Prediction, request: pb.ModelInferRequest, specs: list[TensorSpec],
           requested: list[str]) -> pb.ModelInferResponse:
    return _scalar_reply(result, request, specs, requested) or \
        encode_outputs(result, request, output_arrays(result.outputs, specs, requested))


#: Output datatypes a one-row reply writes straight from the row's values, the exact type each needs.
EXACT_OUTPUTS = {"BYTES": ("bytes_contents", (str, bytes)), "FP64": ("fp64_contents", (float,)),
                 "INT64": ("int64_contents", (int,))}


def _scalar_reply(result: Prediction, request: pb.ModelInferRequest, specs: list[TensorSpec],
                  requested: list[str]) -> pb.ModelInferResponse | None:
    """The reply to a one-row request whose outputs are strings or numbers, written without numpy
    (as ``_scalar_row`` reads such a request); None for anything else, which encode_outputs writes."""
    if request.raw_input_contents or len(result.outputs) != 1:
        return None
    (row,) = result.outputs
    response = _answer(result, request)
    for spec in specs:
        if requested and spec.name not in requested:
            continue
        value, (field, kinds) = row[spec.name], EXACT_OUTPUTS.get(spec.datatype, ("", ()))
        if type(value) not in kinds or spec.shape or spec.as_json:  # type(): a bool is no INT64 here
            return None
        tensor = response.outputs.add(name=spec.name, datatype=spec.datatype, shape=[1])
        getattr(tensor.contents, field).append(value.encode() if isinstance(value, str) else value)
    return response


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponseTensorMetadata:
    metadata = spec.metadata()
    return pb.ModelMetadataResponseTensorMetadata(name=metadata["name"], datatype=metadata["datatype"],
                                                  shape=metadata["shape"])


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    arrays = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in arrays:
            raise InvalidInput(f"input tensor '{tensor.name}' is given twice")
        if raw and _has_contents(tensor):
            raise InvalidInput(f"input '{tensor.name}' has values in contents and the request has "
                               "raw_input_contents: use one or the other")
        datatype = check_datatype(tensor.name, tensor.datatype)
        flat = _from_raw(raw[index], tensor.name, datatype) if raw else _from_contents(tensor, datatype)
        arrays[tensor.name] = shaped(flat, tensor.shape, tensor.name, datatype)
    return arrays


def _has_contents(tensor: Any) -> bool:
    return any(getattr(tensor.contents, field) for field in set(CONTENTS_FIELD.values()))


def _from_raw(raw: bytes, name: str, datatype: str) -> np.ndarray:
    try:
        return array_from_bytes(raw, datatype)
    except ValueError as exc:
        raise InvalidInput(f"input '{name}': raw contents do not match datatype {datatype}: {exc}") from None


def _from_contents(tensor: Any, datatype: str) -> np.ndarray:
    if datatype not in CONTENTS_FIELD:
        raise InvalidInput(f"input '{tensor.name}': {datatype} must be sent in raw_input_contents")
    contents = tensor.contents
    values = getattr(contents, CONTENTS_FIELD[datatype])
    if not values:
        used = [field for field in set(CONTENTS_FIELD.values()) if getattr(contents, field)]
        if used:
            raise InvalidInput(f"input '{tensor.name}' is {datatype}, so its values belong in "
                               f"{CONTENTS_FIELD[datatype]}, not {', '.join(sorted(used))}")
    return array_from_values(list(values), datatype, tensor.name)


def encode_outputs(result: Prediction, request: pb.ModelInferRequest,
                   arrays: list[tuple[TensorSpec, np.ndarray]]) -> pb.ModelInferResponse:
    raw = bool(request.raw_input_contents)  # answer in the form the client used
    response = _answer(result, request)
    for spec, array in arrays:
        tensor = response.outputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(array_to_bytes(array, spec.datatype))
        else:
            tensor.contents.CopyFrom(_contents(array, spec.datatype))
    return response


def _contents(array: np.ndarray, datatype: str) -> pb.InferTensorContents:
    values = array.reshape(-1).tolist()
    if datatype == "BYTES":
        values = [value if isinstance(value, bytes) else str(value).encode() for value in values]
    return pb.InferTensorContents(**{CONTENTS_FIELD[datatype]: values})
