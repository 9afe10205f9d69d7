"""The daemon: owns the loop and the signals, runs every transport, drains on shutdown."""

from __future__ import annotations

import gc
import resource
import signal
import time
from collections.abc import Iterable
from typing import Any

import anyio
import pluggy
import structlog
from anyio.abc import TaskStatus

from hostd import plugins
from hostd.dataplane import DataPlane
from hostd.errors import StartupError, innermost
from hostd.observability import Metrics
from hostd.registry import Registry
from hostd.settings import HostSettings
from hostd.transports import Shutdown, Transport, TransportContext

log = structlog.get_logger("hostd.daemon")


async def serve(settings: HostSettings, pm: pluggy.PluginManager, stop: anyio.Event | None = None, *,
                handle_signals: bool = True, task_status: TaskStatus[DataPlane] = anyio.TASK_STATUS_IGNORED,
                ) -> None:
    """Load the models, start every configured transport, serve until ``stop`` (or a signal)."""
    started = time.perf_counter()
    _raise_file_limit()
    stop = stop or anyio.Event()
    available = plugins.transports(pm)
    selected = [available[name] for name in settings.transports]
    registry = await anyio.to_thread.run_sync(Registry.from_settings, settings)
    await anyio.to_thread.run_sync(registry.warm_up)
    dataplane = DataPlane(registry, Metrics())
    try:
        async with anyio.create_task_group() as signals:
            if handle_signals:
                signals.start_soon(_stop_on_signal, stop, signals.cancel_scope)
            await _serve_until_stopped(selected, dataplane, settings, stop, task_status, started)
            signals.cancel_scope.cancel()
    finally:
        await anyio.to_thread.run_sync(registry.close)
        log.info("stopped")


async def _serve_until_stopped(transports: list[Transport[Any]], dataplane: DataPlane, settings: HostSettings,
                               stop: anyio.Event, task_status: TaskStatus[DataPlane], started: float) -> None:
    shutdown = Shutdown()
    async with anyio.create_task_group() as tg:
        await _start_transports(tg, transports, dataplane, settings, shutdown)
        # Everything loaded so far (libraries, models: ~150k objects) lives as long as the daemon.
        # Freezing it keeps the collector's full passes from walking it again: such a pass took
        # ~75 ms and set the p99 latency under load.
        gc.collect()
        gc.freeze()
        dataplane.set_ready()
        log.info("ready", models=[f"{m.name}:{m.version}" for m in dataplane.models()],
                 transports=[t.name for t in transports], seconds=round(time.perf_counter() - started, 3))
        task_status.started(dataplane)
        await stop.wait()
        shutdown.begin(settings.shutdown_grace_s)  # the one drain deadline every transport reads
        log.info("draining", grace_s=settings.shutdown_grace_s)
        dataplane.start_draining()
        # Transports stop accepting and finish their in-flight work by the deadline; a moment after
        # it (to write the last replies) whatever is left is cancelled.
        tg.cancel_scope.deadline = shutdown.deadline + 1
        with shutdown.until_deadline():
            await dataplane.wait_idle()


async def _start_transports(tg: anyio.abc.TaskGroup, transports: Iterable[Transport[Any]], dataplane: DataPlane,
                            settings: HostSettings, stop: Shutdown) -> None:
    for transport in transports:
        ctx = TransportContext(transport.name, dataplane, settings.transports[transport.name], settings, stop)
        try:
            await tg.start(transport.serve, ctx)
        except Exception as exc:
            raise StartupError(f"transport '{transport.name}' failed to start: {innermost(exc)}") from exc
        log.info("transport started", transport=transport.name)


def _raise_file_limit() -> None:
    """Raise the soft limit on open files to the hard one: every connection takes a descriptor, and
    the usual soft default (1,024) is soon used up by clients, leaving none to accept others with."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. macOS, whose hard limit is "unlimited"
            log.warning("could not raise the open-file limit", soft=soft, hard=hard, error=str(exc))
    log.info("open-file limit", open_files=soft if soft != resource.RLIM_INFINITY else "unlimited")


async def _stop_on_signal(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if stop.is_set():
                log.warning("second signal: stopping now", signal=signal.Signals(signum).name)
                scope.cancel()
                return
            log.info("stopping", signal=signal.Signals(signum).name)
            stop.set()
