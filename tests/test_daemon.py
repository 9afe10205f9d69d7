"""hostd.daemon: loads the models, runs every configured transport, drains and closes on stop."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus
from pydantic import BaseModel, ConfigDict

from hostd import daemon, plugins
from hostd.dataplane import DataPlane, Prediction
from hostd.errors import NotReady, StartupError
from hostd.hookspecs import hookimpl
from hostd.settings import HostSettings, parse_settings
from hostd.transports import Transport, TransportContext
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
    contexts: list[TransportContext] = field(default_factory=list)
    fail_on_start: bool = False

    @hookimpl
    def register_transports(self, register: Any) -> None:
        register(Transport(name="toy", settings=ToySettings, serve=self.serve))

    async def serve(self, ctx: TransportContext, *, task_status: TaskStatus[None]) -> None:
        self.contexts.append(ctx)
        if self.fail_on_start:
            raise OSError("address already in use")
        self.events.append("started")
        task_status.started()
        await ctx.stop.wait()
        self.events.append("stopped")


def host_settings(transports: str = "toy: {greeting: hi}", grace_s: float = 5) -> HostSettings:
    text = textwrap.dedent(f"""\
        shutdown_grace_s: {grace_s}
        models:
          - class_path: tests.support.toy_extra:ClosableEcho
        transports:
          {transports}
        """)
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
            assert ctx.host is settings
            assert ctx.stop is stop
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


async def test_a_request_in_flight_at_stop_is_answered_and_new_ones_are_refused() -> None:
    transport, stop = ToyTransport(), anyio.Event()
    results: list[Prediction] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            dataplane: DataPlane = await tg.start(start(host_settings(), transport, stop))
            [served] = dataplane.models()

            async def slow() -> None:
                results.append(await dataplane.predict("echo", {"x": 1, "delay_ms": 300}))
                # Models are closed only after accepted requests are answered.
                assert served.model.closed == 0

            tg.start_soon(slow)
            with anyio.fail_after(5):
                while served.pending == 0:
                    await anyio.sleep(0.001)
            stop.set()
            await anyio.sleep(0)
            with pytest.raises(NotReady, match="draining"):
                await dataplane.predict("echo", {"x": 1})
    assert [result.output["y"] for result in results] == [2]
    assert served.model.closed == 1


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
