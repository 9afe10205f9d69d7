"""hostd.daemon: loads the models, runs every configured transport, drains and closes on stop."""

from __future__ import annotations

import errno
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus
from pydantic import BaseModel, ConfigDict

from hostd import daemon, plugins
from hostd.configfile import parse_settings
from hostd.dataplane import DataPlane, Prediction
from hostd.errors import NotReady, StartupError
from hostd.hookspecs import RegisterTransport, hookimpl
from hostd.registry import Registry
from hostd.settings import HostSettings
from hostd.transports import CannotListen, Shutdown, Transport, TransportContext
from tests.support.toy_extra import ClosableEcho

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ToySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    greeting: str = "hello"


@dataclass(eq=False)
class ToyTransport:
    """A transport plugin that records what the daemon gives it and when it starts and stops."""

    events: list[str] = field(default_factory=list)
    contexts: list[TransportContext[ToySettings]] = field(default_factory=list)
    fail_on_start: bool = False
    deadlines_at_stop: list[float] = field(default_factory=list)  # the drain deadline, as seen at the stop

    @hookimpl
    def register_transports(self, register: RegisterTransport) -> None:
        register(Transport(name="toy", settings=ToySettings, serve=self.serve))

    async def serve(self, ctx: TransportContext[ToySettings], *, task_status: TaskStatus[None]) -> None:
        self.contexts.append(ctx)
        if self.fail_on_start:
            raise OSError("address already in use")
        self.events.append("started")
        task_status.started()
        await ctx.stop.wait()
        self.deadlines_at_stop.append(ctx.stop.deadline)
        self.events.append("stopped")


def host_settings(transports: str = "toy: {greeting: hi}", grace_s: float = 5, gated: bool = False) -> HostSettings:
    text = textwrap.dedent(f"""\
        shutdown_grace_s: {grace_s}
        models:
          - class_path: tests.support.toy_extra:ClosableEcho
        """)
    if gated:  # a second model, whose requests stay in it until the test opens their gate
        text += "  - {class_path: 'tests.support.toy:GatedEcho', configuration: {name: gated}}\n"
    text += f"transports:\n  {transports}\n"
    return parse_settings(text, "host.yaml", {"toy": ToySettings})


def start(settings: HostSettings, transport: ToyTransport, stop: anyio.Event) -> Any:
    pm = plugins.plugin_manager(extra=[transport])
    return partial(daemon.serve, settings, pm, stop, handle_signals=False)


async def test_the_daemon_starts_the_transport_with_its_settings_and_the_dataplane() -> None:
    transport, stop, settings = ToyTransport(), anyio.Event(), host_settings()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            dataplane: DataPlane = await tg.start(start(settings, transport, stop))
            assert transport.events == ["started"]
            [ctx] = transport.contexts
            assert ctx.dataplane is dataplane
            assert ctx.settings == ToySettings(greeting="hi")
            assert ctx.daemon is settings
            assert ctx.name == "toy"
            assert not ctx.stop.is_set()
            assert dataplane.ready
            stop.set()
    assert transport.events == ["started", "stopped"]


async def test_a_transport_can_predict_through_the_dataplane_it_was_given() -> None:
    transport, stop = ToyTransport(), anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(start(host_settings(), transport, stop))
            prediction = await transport.contexts[0].dataplane.predict("echo", {"x": 4}, transport="toy")
            stop.set()
    assert prediction == Prediction("echo", "1.0.0", [{"y": 8.0, "text": ""}])


async def test_serve_returns_after_stop_and_closes_the_models() -> None:
    transport, stop = ToyTransport(), anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            dataplane: DataPlane = await tg.start(start(host_settings(), transport, stop))
            [model] = [served.model for served in dataplane.models()]
            assert isinstance(model, ClosableEcho) and model.closed == 0
            stop.set()
    assert model.closed == 1


async def test_a_request_in_flight_at_stop_is_answered_and_new_ones_are_refused(gates: Callable[[], Path]) -> None:
    transport, stop, gate = ToyTransport(), anyio.Event(), gates()
    results: list[Prediction] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            dataplane: DataPlane = await tg.start(start(host_settings(gated=True), transport, stop))
            echo, gated = dataplane.model("echo"), dataplane.model("gated")

            async def held() -> None:
                results.append(await dataplane.predict("gated", {"x": 1, "gate": str(gate)}))
                # Models are closed only after accepted requests are answered.
                assert echo.model.closed == 0

            tg.start_soon(held)
            while gated.pending == 0:
                await anyio.sleep(0.001)
            stop.set()
            await anyio.wait_all_tasks_blocked()  # the daemon has seen the stop: it drains
            with pytest.raises(NotReady, match="draining"):
                await dataplane.predict("echo", {"x": 1})
            assert results == []
            gate.touch()
    assert [result.output["y"] for result in results] == [2]
    assert echo.model.closed == 1


async def test_a_transport_that_fails_to_start_fails_serve_and_the_models_are_still_closed() -> None:
    transport, stop = ToyTransport(fail_on_start=True), anyio.Event()
    with pytest.raises(ExceptionGroup) as raised, anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(start(host_settings(), transport, stop))
    assert raised.group_contains(StartupError, match="transport 'toy' failed to start: .*address already in use",
                                 depth=None)
    [model] = [served.model for served in transport.contexts[0].dataplane.models()]
    assert model.closed == 1
    assert not transport.contexts[0].dataplane.ready


async def test_the_drain_deadline_is_set_once_by_the_daemon_before_a_transport_sees_the_stop() -> None:
    transport, stop = ToyTransport(), anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(start(host_settings(grace_s=3), transport, stop))
            [ctx] = transport.contexts
            assert ctx.stop.deadline == math.inf  # no deadline while serving
            before = anyio.current_time()
            stop.set()
    after = anyio.current_time()
    [seen] = transport.deadlines_at_stop
    assert before + 3 <= seen <= after + 3  # the grace period, counted from the stop
    assert ctx.stop.deadline == seen  # set once: the deadline the transport saw is the one that held


async def test_the_daemon_waits_for_work_in_flight_only_until_the_drain_deadline(
        gates: Callable[[], Path]) -> None:
    transport, stop = ToyTransport(), anyio.Event()
    # The request waits for a gate opened only at teardown: only the grace period can end the drain.
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            dataplane: DataPlane = await tg.start(start(host_settings(grace_s=0.2, gated=True), transport, stop))
            echo, gated = dataplane.model("echo"), dataplane.model("gated")
            tg.start_soon(partial(dataplane.predict, "gated", {"x": 1, "gate": str(gates())}))
            while gated.pending == 0:
                await anyio.sleep(0.001)
            stop.set()
            while echo.model.closed == 0:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()


def test_a_bind_failure_names_the_address_the_setting_and_its_environment_variable() -> None:
    settings = host_settings()
    ctx = TransportContext("toy", DataPlane(Registry()), ToySettings(), settings, Shutdown())
    with pytest.raises(CannotListen) as raised, ctx.binding("port", "127.0.0.1:8080"):
        raise OSError(errno.EADDRINUSE, "error while attempting to bind on address ('127.0.0.1', 8080)")
    assert str(raised.value) == (
        "cannot listen on 127.0.0.1:8080 (Address already in use); to use another address, set "
        "transports.toy.port (host.yaml:5) or the environment variable HOSTD_TRANSPORTS__TOY__PORT")
    with pytest.raises(ValueError), ctx.binding("port", "127.0.0.1:8080"):
        raise ValueError("not a bind failure: passes through")


def test_a_transport_exposed_without_keys_or_encryption_is_a_warning() -> None:
    from hostd_http.plugin import HttpSettings
    from hostd_zmq.plugin import ZmqSettings
    from structlog.testing import capture_logs

    from hostd.configfile import parse_settings
    from hostd.daemon import _warn_if_exposed

    text = """
models: [{class_path: tests.support.toy:EchoModel}]
transports:
  http: {host: 0.0.0.0}
  zmq: {bind: "tcp://127.0.0.1:5555", zerorpc_bind: null}
"""
    known = {"http": HttpSettings, "zmq": ZmqSettings}
    with capture_logs() as logs:
        _warn_if_exposed(parse_settings(text, "host.yaml", known))
    assert [(line["transport"], line["host"]) for line in logs] == [("http", "0.0.0.0")]
    keys = "auth: {keys: [{name: a, sha256: \"" + "0" * 64 + "\"}]}\n"
    with capture_logs() as logs:
        _warn_if_exposed(parse_settings(text + keys, "host.yaml", known))
    assert logs == []
