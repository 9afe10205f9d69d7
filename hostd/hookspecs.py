"""The hooks a hostd plugin can implement (``hostd`` entry-point group)."""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("hostd")
hookimpl = pluggy.HookimplMarker("hostd")


@hookspec
def register_transports(register: Any) -> None:
    """Register transports: call ``register(hostd.transports.Transport(...))`` once per transport."""


@hookspec
def register_batch_engines(register: Any) -> None:
    """Register batch engines for ``hostd batch``: call ``register(hostd.offline.BatchEngine(...))``."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add subcommands to the ``hostd`` click group ``cli``."""
