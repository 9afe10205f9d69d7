"""The plugin manager: built-in and third-party plugins load through the same entry points."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

from hostd import hookspecs
from hostd.transports import Transport

if TYPE_CHECKING:
    from hostd.batch import BatchEngine

ENTRY_POINT_GROUP = "hostd"


def plugin_manager(extra: Iterable[object] = ()) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()  # a misspelt hook name fails here, loudly
    return pm


def transports(pm: pluggy.PluginManager) -> dict[str, Transport]:
    found: dict[str, Transport] = {}

    def register(transport: Transport) -> None:
        if not isinstance(transport, Transport):
            raise TypeError(f"register_transports expects a hostd.transports.Transport, got {transport!r}")
        if transport.name in found:
            raise ValueError(f"two plugins register a transport named {transport.name!r}")
        found[transport.name] = transport

    pm.hook.register_transports(register=register)
    return found


def batch_engines(pm: pluggy.PluginManager) -> dict[str, BatchEngine]:
    from hostd.batch import BatchEngine

    found: dict[str, BatchEngine] = {}

    def register(engine: BatchEngine) -> None:
        if not isinstance(engine, BatchEngine):
            raise TypeError(f"register_batch_engines expects a hostd.batch.BatchEngine, got {engine!r}")
        if engine.name in found:
            raise ValueError(f"two plugins register a batch engine named {engine.name!r}")
        found[engine.name] = engine

    pm.hook.register_batch_engines(register=register)
    return found
