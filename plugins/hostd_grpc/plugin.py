"""The gRPC transport plugin (grpclib): OIP v2, typed per-model services, health and reflection."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click
import structlog
from anyio.abc import TaskStatus
from google.protobuf import descriptor_pb2, descriptor_pool
from grpclib.health.check import ServiceCheck
from grpclib.health.service import OVERALL, Health
from grpclib.reflection.service import ServerReflection
from pydantic import BaseModel, ConfigDict, Field

from hostd.auth import Scope
from hostd.dataplane import DataPlane
from hostd.hookspecs import RegisterTransport, hookimpl
from hostd.registry import Registry, ServedModel
from hostd.tasks import InFlight
from hostd.tls import TlsSettings, server_context
from hostd.transports import Transport, TransportContext
from hostd_grpc import oip
from hostd_grpc.inference import InferenceService
from hostd_grpc.server import HostdServer
from hostd_grpc.typed import ModelProto, ProtoError, TypedService, describe, render
from hostd_grpc.unary import GuardedService, RequestLimits

log = structlog.get_logger("hostd.grpc")


class GrpcSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    typed_services: bool = True  # a Predict service per model, from its schemas (see `hostd proto`)
    reflection: bool = True  # grpc.reflection.v1 and v1alpha, for grpcurl-style tools
    # A request message bigger than this is refused (RESOURCE_EXHAUSTED, "PAYLOAD_TOO_LARGE: ...") after
    # its 5-byte gRPC prefix, before it is read; the same default as the HTTP transport's.
    max_request_bytes: int = Field(default=1 << 20, ge=1024)
    # A request message must arrive within this many seconds of its stream's headers, else
    # DEADLINE_EXCEEDED ("INVALID_INPUT: the request message did not arrive ..."): a client that
    # announces a message and stalls cannot hold a stream, or the drain, for ever.
    body_timeout_s: float = Field(default=10.0, gt=0)

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits(self.max_request_bytes, self.body_timeout_s)
    # Open connections at most; one more gets an HTTP/2 GOAWAY (ENHANCE_YOUR_CALM) and is closed at once.
    max_connections: int = Field(default=1000, ge=1)
    tls: TlsSettings | None = None  # TLS (ALPN h2), with mutual TLS if client_ca is set


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


async def serve_grpc(ctx: TransportContext[GrpcSettings], *, task_status: TaskStatus[None]) -> None:
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


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    register(Transport(name="grpc", settings=GrpcSettings, serve=serve_grpc))


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.command()
    @click.argument("config", type=click.Path(dir_okay=False, path_type=Path), envvar="HOSTD_CONFIG")
    @click.option("-o", "--output", "output", type=click.Path(file_okay=False, path_type=Path), required=True,
                  help="Directory for the .proto files.")
    @click.option("--model", "names", multiple=True, metavar="NAME",
                  help="Only this model (repeatable): only the models named are loaded. Default: every model.")
    def proto(config: Path, output: Path, names: tuple[str, ...]) -> None:
        """Write a .proto per model in CONFIG: its schemas as messages and a Predict rpc."""
        from hostd.cli import load

        settings, _ = load(config)
        wanted: list[str | None] = [*dict.fromkeys(names)] or [None]  # None: every model
        with ExitStack() as loaded:
            models = []
            for name in wanted:
                registry = Registry.from_settings(settings, only=name)
                loaded.callback(registry.close)
                if name is not None and name not in registry.names():
                    raise click.ClickException(f"{config}: no model named '{name}' (`hostd models` lists them)")
                models += [registry.get(each) for each in registry.names()]  # the newest version of each
            output.mkdir(parents=True, exist_ok=True)
            for served in models:
                _write_proto(served, output)


def _write_proto(served: ServedModel, output: Path) -> None:
    try:
        described = describe(served)
    except ProtoError as exc:
        raise click.ClickException(str(exc)) from None
    path = output / f"{Path(described.file.name).name}"
    path.write_text(render(described))
    click.echo(f"{path}\t{described.package}.{described.service}/Predict")
