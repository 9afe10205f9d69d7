"""The gRPC transport plugin (grpclib): OIP v2, typed per-model services, health and reflection.

This module is what the daemon imports at start for every installed transport: settings and hooks
only. The server (grpclib, protobuf: ~0.25 s of imports) is imported when gRPC is configured.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import click
from anyio.abc import TaskStatus
from pydantic import BaseModel, ConfigDict, Field

from hostd.hookspecs import RegisterTransport, hookimpl
from hostd.tls import TlsSettings
from hostd.transports import Transport, TransportContext

if TYPE_CHECKING:
    from hostd.registry import ServedModel
    from hostd_grpc.unary import RequestLimits


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
        from hostd_grpc.unary import RequestLimits

        return RequestLimits(self.max_request_bytes, self.body_timeout_s)
    # Open connections at most; one more gets an HTTP/2 GOAWAY (ENHANCE_YOUR_CALM) and is closed at once.
    max_connections: int = Field(default=1000, ge=1)
    tls: TlsSettings | None = None  # TLS (ALPN h2), with mutual TLS if client_ca is set


async def serve_grpc(ctx: TransportContext[GrpcSettings], *, task_status: TaskStatus[None]) -> None:
    from hostd_grpc.serving import serve

    await serve(ctx, task_status=task_status)


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
        from hostd.registry import Registry

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
    from hostd_grpc.typed import ProtoError, describe, render

    try:
        described = describe(served)
    except ProtoError as exc:
        raise click.ClickException(str(exc)) from None
    path = output / f"{Path(described.file.name).name}"
    path.write_text(render(described))
    click.echo(f"{path}\t{described.package}.{described.service}/Predict")
