"""The gRPC server: the services it serves (OIP v2, typed per model, health, reflection) and its run."""

from __future__ import annotations

from typing import Any

import structlog
from anyio.abc import TaskStatus
from google.protobuf import descriptor_pb2, descriptor_pool
from grpclib.health.check import ServiceCheck
from grpclib.health.service import OVERALL, Health
from grpclib.reflection.service import ServerReflection

from hostd.auth import Scope
from hostd.dataplane import DataPlane
from hostd.tasks import InFlight
from hostd.tls import server_context
from hostd.transports import TransportContext
from hostd_grpc import oip
from hostd_grpc.inference import InferenceService
from hostd_grpc.plugin import GrpcSettings
from hostd_grpc.server import HostdServer
from hostd_grpc.typed import ModelProto, ProtoError, TypedService, describe
from hostd_grpc.unary import GuardedService

log = structlog.get_logger("hostd.grpc")


def build_services(dataplane: DataPlane, settings: GrpcSettings, in_flight: InFlight) -> list[Any]:
    pool = descriptor_pool.DescriptorPool()
    oip_file = descriptor_pb2.FileDescriptorProto()
    oip.FILE.CopyToProto(oip_file)
    pool.Add(oip_file)
    services: list[Any] = [InferenceService(dataplane, in_flight, settings.limits)]
    if settings.typed_services:
        for proto in typed_protos(dataplane):
            pool.Add(proto.file)
            services.append(TypedService(dataplane, proto, pool, in_flight, settings.limits))

    async def ready() -> bool:
        return dataplane.ready

    check = ServiceCheck(ready, check_ttl=0.5)
    health = Health({OVERALL: [check], **{service: [check] for service in services}})
    served = [*services, health]  # what reflection describes
    reflection = ServerReflection.extend(served, pool=pool)[len(served):] if settings.reflection else []
    # With API keys, health stays open to probes (auth.open_health) and reflection needs the read scope.
    return [*services, GuardedService(health, dataplane, Scope.READ, open_as="health"),
            *(GuardedService(service, dataplane, Scope.READ) for service in reflection)]


def typed_protos(dataplane: DataPlane) -> list[ModelProto]:
    """One typed service per model name (its latest version); models protobuf cannot describe are
    skipped with a warning (they are still served by the OIP v2 service)."""
    protos = []
    for name in sorted({served.name for served in dataplane.models()}):
        try:
            protos.append(describe(dataplane.model(name)))
        except ProtoError as exc:
            log.warning("no typed gRPC service", model=name, reason=str(exc))
    return protos


async def serve(ctx: TransportContext[GrpcSettings], *, task_status: TaskStatus[None]) -> None:
    settings = ctx.settings
    in_flight = InFlight()
    server = HostdServer(build_services(ctx.dataplane, settings, in_flight), max_connections=settings.max_connections,
                         max_request_bytes=settings.max_request_bytes)
    with ctx.binding("port", f"{settings.host}:{settings.port}"):
        tls = server_context(settings.tls, ctx.daemon.folder, ["h2"]) if settings.tls else None
        await server.start(settings.host, settings.port, ssl=tls)
    task_status.started()
    try:
        await ctx.stop.wait()
        # grpclib's close() cancels running handlers: let the accepted RPCs finish first.
        with ctx.stop.until_deadline():
            await in_flight.wait_idle()
    finally:
        server.close()
        await server.wait_closed()
