"""The plugin manager: built-in and third-party plugins load through the same entry points."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pluggy

from hostd import hookspecs
from hostd.transports import Transport

if TYPE_CHECKING:
    from hostd.offline import BatchEngine

ENTRY_POINT_GROUP = "hostd"


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)


def plugin_manager(extra: Iterable[object] = ()) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()  # a misspelt hook name fails here, loudly
    return pm


def transports(pm: pluggy.PluginManager) -> dict[str, Transport[Any]]:
    return _registered(pm.hook.register_transports, Transport, "transport")


def batch_engines(pm: pluggy.PluginManager) -> dict[str, BatchEngine]:
    from hostd.offline import BatchEngine

    return _registered(pm.hook.register_batch_engines, BatchEngine, "batch engine")


def _registered(hook: Any, kind: type[T], label: str) -> dict[str, T]:
    """Call ``hook(register=...)``; what plugins register, by name (one of each name)."""
    found: dict[str, T] = {}

    def register(item: T) -> None:
        if not isinstance(item, kind):
            raise TypeError(f"{hook.name} expects a {kind.__module__}.{kind.__qualname__}, got {item!r}")
        name = item.name
        if name in found:
            raise ValueError(f"two plugins register a {label} named {name!r}")
        found[name] = item

    hook(register=register)
    return found
