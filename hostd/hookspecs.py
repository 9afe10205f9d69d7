"""The hooks a hostd plugin can implement (``hostd`` entry-point group)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

from hostd.transports import Transport

if TYPE_CHECKING:
    import click

    from hostd.offline import BatchEngine

hookspec = pluggy.HookspecMarker("hostd")
hookimpl = pluggy.HookimplMarker("hostd")

#: What ``register_transports`` is given: call it with each transport the plugin provides.
RegisterTransport = Callable[[Transport[Any]], None]
#: What ``register_batch_engines`` is given: call it with each batch engine the plugin provides.
RegisterBatchEngine = Callable[["BatchEngine"], None]


@hookspec
def register_transports(register: RegisterTransport) -> None:
    """Register transports: call ``register(hostd.transports.Transport(...))`` once per transport."""


@hookspec
def register_batch_engines(register: RegisterBatchEngine) -> None:
    """Register batch engines for ``hostd batch``: call ``register(hostd.offline.BatchEngine(...))``."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``hostd`` click group ``cli``."""
