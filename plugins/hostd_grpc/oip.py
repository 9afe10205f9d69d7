"""The Open Inference Protocol messages as google-protobuf classes, for serving.

Built from the descriptors of the betterproto2 module in ``_proto`` (one .proto, one source of
truth), so the names match it. On the ModelInfer hot path, betterproto2's pure-Python parse and
serialise took ~25% of the event loop at 64 concurrent streams; google-protobuf's C (upb) messages
do the same in a few percent, and reject malformed bytes on their own.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message_factory import GetMessageClass

from hostd_grpc._proto import inference as _generated


def _message(name: str) -> Any:
    return GetMessageClass(getattr(_generated, name).DESCRIPTOR)


InferParameter = _message("InferParameter")
InferTensorContents = _message("InferTensorContents")
ModelInferRequest = _message("ModelInferRequest")
ModelInferRequestInferInputTensor = _message("ModelInferRequestInferInputTensor")
ModelInferRequestInferRequestedOutputTensor = _message("ModelInferRequestInferRequestedOutputTensor")
ModelInferResponse = _message("ModelInferResponse")
ModelInferResponseInferOutputTensor = _message("ModelInferResponseInferOutputTensor")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
ModelMetadataResponseTensorMetadata = _message("ModelMetadataResponseTensorMetadata")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
