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

FILE = _generated.GRPC_PREDICT_V2_PROTO_DESCRIPTOR  # grpc_predict_v2.proto, for reflection


def _message(name: str) -> Any:
    return GetMessageClass(getattr(_generated, name).DESCRIPTOR)


InferTensorContents = _message("InferTensorContents")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
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
RepositoryIndexRequest = _message("RepositoryIndexRequest")
RepositoryIndexResponse = _message("RepositoryIndexResponse")
RepositoryModelLoadRequest = _message("RepositoryModelLoadRequest")
RepositoryModelLoadResponse = _message("RepositoryModelLoadResponse")
RepositoryModelUnloadRequest = _message("RepositoryModelUnloadRequest")
RepositoryModelUnloadResponse = _message("RepositoryModelUnloadResponse")
