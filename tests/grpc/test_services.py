"""What the gRPC transport serves: every RPC parses and writes google-protobuf messages.

That is why the server needs no codec of its own: google protobuf rejects malformed bytes itself
(betterproto2's pure-Python messages did not, and are no longer on the served path)."""

from __future__ import annotations

import betterproto2
from google.protobuf.message import Message
from hostd_grpc.plugin import GrpcSettings
from hostd_grpc.serving import build_services

from hostd.dataplane import DataPlane
from hostd.registry import Registry
from hostd.settings import HostSettings
from hostd.tasks import InFlight


def test_every_rpc_served_uses_google_protobuf_messages() -> None:
    plane = DataPlane(Registry.from_settings(HostSettings.model_validate(
        {"models": [{"class_path": "tests.support.toy:EchoModel"}]})))
    handlers = {path: handler for service in build_services(plane, GrpcSettings(), InFlight())
                for path, handler in service.__mapping__().items()}
    assert "/inference.GRPCInferenceService/ModelInfer" in handlers
    assert "/hostd.models.echo.Echo/Predict" in handlers
    for path, handler in handlers.items():
        for message_type in (handler.request_type, handler.reply_type):
            assert issubclass(message_type, Message), (path, message_type)
            assert not issubclass(message_type, betterproto2.Message), (path, message_type)
