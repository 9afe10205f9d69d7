"""hostd.plugins: built-in and third-party plugins load the same way; mistakes fail loudly."""

from __future__ import annotations

import inspect
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy
import pytest
from pydantic import BaseModel, ConfigDict

from hostd import hookspecs, plugins
from hostd.hookspecs import RegisterTransport, hookimpl
from hostd.transports import Transport, TransportContext


class ToySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = "toy://"


async def serve_toy(ctx: TransportContext[ToySettings], *, task_status: Any) -> None:
    task_status.started()
    await ctx.stop.wait()


class ToyPlugin:
    def __init__(self, name: str = "toy") -> None:
        self.name = name

    @hookimpl
    def register_transports(self, register: RegisterTransport) -> None:
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


PLUGIN = """\
from anyio.abc import TaskStatus
from pydantic import BaseModel

from hostd.hookspecs import RegisterTransport, hookimpl
from hostd.transports import Transport, TransportContext


class MySettings(BaseModel):
    port: int = 9000


async def serve(ctx: TransportContext[MySettings], *, task_status: TaskStatus[None]) -> None:
    port: int = ctx.settings.port
    grace: float = ctx.daemon.shutdown_grace_s
    task_status.started()
    await ctx.stop.wait()
    with ctx.stop.until_deadline():
        print(port, grace, ctx.stop.remaining())


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    register(Transport(name="mine", settings=MySettings, serve=serve))
"""


def mypy_strict(source: str, tmp_path: Path) -> tuple[str, int]:
    api = pytest.importorskip("mypy.api")
    plugin = tmp_path / "plugin.py"
    plugin.write_text(textwrap.dedent(source))
    stdout, _, status = api.run(["--strict", "--follow-imports=silent", "--no-error-summary",
                                 "--cache-dir", str(tmp_path / "cache"), str(plugin)])
    return stdout, status


@pytest.mark.timeout(120)
def test_a_plugin_type_checks_strictly_with_no_re_annotation_and_no_ignores(tmp_path: Path) -> None:
    stdout, status = mypy_strict(PLUGIN, tmp_path)
    assert status == 0, stdout
    # ctx.settings is the transport's own settings class, not Any: a wrong use of it is caught.
    stdout, status = mypy_strict(PLUGIN.replace("port: int = ctx.settings.port", "port: str = ctx.settings.port"),
                                 tmp_path)
    assert status == 1 and 'expression has type "int", variable has type "str"' in stdout, stdout
