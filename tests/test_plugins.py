"""hostd.plugins: built-in and third-party plugins load the same way; mistakes fail loudly."""

from __future__ import annotations

import inspect
from importlib import metadata
from typing import Any

import pluggy
import pytest
from pydantic import BaseModel, ConfigDict

from hostd import hookspecs, plugins
from hostd.hookspecs import hookimpl
from hostd.transports import Transport, TransportContext


class ToySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = "toy://"


async def serve_toy(ctx: TransportContext, *, task_status: Any) -> None:
    task_status.started()
    await ctx.stop.wait()


class ToyPlugin:
    def __init__(self, name: str = "toy") -> None:
        self.name = name

    @hookimpl
    def register_transports(self, register: Any) -> None:
        register(Transport(name=self.name, settings=ToySettings, serve=serve_toy))


def test_an_extra_plugin_registers_a_transport_next_to_the_built_in_ones() -> None:
    pm = plugins.plugin_manager(extra=[ToyPlugin()])
    found = plugins.transports(pm)
    assert found["toy"] == Transport(name="toy", settings=ToySettings, serve=serve_toy)
    assert "http" in found


def test_the_http_transport_is_found_through_the_hostd_entry_point_group() -> None:
    group = metadata.entry_points(group=plugins.ENTRY_POINT_GROUP)
    entry_points = {entry.name: entry.value for entry in group}
    assert entry_points.get("http") == "hostd_http.plugin"

    pm = plugins.plugin_manager()
    plugin = pm.get_plugin("http")
    assert plugin is not None and plugin.__name__ == "hostd_http.plugin"
    assert [dist.project_name for loaded, dist in pm.list_plugin_distinfo() if loaded is plugin] == ["hostd"]
    http = plugins.transports(pm)["http"]
    assert http.name == "http"
    assert issubclass(http.settings, BaseModel)


def test_a_misspelt_hook_name_fails_loudly() -> None:
    class Misspelt:
        @hookimpl
        def register_transport(self, register: Any) -> None:  # missing the final "s"
            raise AssertionError("never called")

    with pytest.raises(pluggy.PluginValidationError, match="register_transport"):
        plugins.plugin_manager(extra=[Misspelt()])


def test_a_hook_with_a_wrong_argument_name_fails_loudly() -> None:
    class WrongArgument:
        @hookimpl
        def register_transports(self, registry: Any) -> None:
            raise AssertionError("never called")

    with pytest.raises(pluggy.PluginValidationError, match="registry"):
        plugins.plugin_manager(extra=[WrongArgument()])


def test_two_plugins_registering_the_same_transport_name_raise() -> None:
    pm = plugins.plugin_manager(extra=[ToyPlugin(), ToyPlugin()])
    with pytest.raises(ValueError, match="two plugins register a transport named 'toy'"):
        plugins.transports(pm)


def test_a_plugin_cannot_take_over_a_built_in_transport_name() -> None:
    pm = plugins.plugin_manager(extra=[ToyPlugin("http")])
    with pytest.raises(ValueError, match="'http'"):
        plugins.transports(pm)


def test_registering_something_that_is_not_a_transport_raises() -> None:
    class Sloppy:
        @hookimpl
        def register_transports(self, register: Any) -> None:
            register({"name": "toy"})

    with pytest.raises(TypeError, match=r"expects a hostd\.transports\.Transport"):
        plugins.transports(plugins.plugin_manager(extra=[Sloppy()]))


def test_plugin_managers_do_not_share_registrations() -> None:
    plugins.plugin_manager(extra=[ToyPlugin()])
    assert "toy" not in plugins.transports(plugins.plugin_manager())


def test_every_hook_is_documented_and_named_register() -> None:
    hooks = [name for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(function, "hostd_spec")]
    assert sorted(hooks) == ["register_batch_engines", "register_commands", "register_transports"]
    for name in hooks:
        assert inspect.getdoc(getattr(hookspecs, name)), f"hook {name} has no docstring"
