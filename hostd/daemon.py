"""The daemon: owns the loop and the signals, runs every transport, drains on shutdown."""

from __future__ import annotations

import functools
import gc
import ipaddress
import resource
import signal
import sys
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import anyio
import pluggy
import structlog
from anyio.abc import TaskStatus

from hostd import plugins, tracing
from hostd.auth import Guard
from hostd.capture import Capture
from hostd.configfile import load_settings
from hostd.dataplane import DataPlane
from hostd.errors import HostdError, StartupError, innermost
from hostd.feedback import Feedback
from hostd.logsinks import make_sink
from hostd.observability import Metrics
from hostd.predictionlog import PredictionLog
from hostd.repository import ModelRepository
from hostd.settings import HostSettings
from hostd.transports import Shutdown, Transport, TransportContext

log = structlog.get_logger("hostd.daemon")
WATCH_INTERVAL_S = 1.0
# How long a thread holding the GIL may run before another that waits for it gets it (Python's default:
# 5 ms). The event loop gives up the GIL at each turn (its select), so behind a model holding the GIL
# in pure Python each turn waited up to 5 ms: a health check took 1-7 s while such a model ran
# (tests/e2e/test_http_e2e.py::test_cpu_heavy_request_does_not_block_health), 5 ms at 1 ms.
SWITCH_INTERVAL_S = 0.001


async def serve(settings: HostSettings, pm: pluggy.PluginManager, stop: anyio.Event | None = None, *,
                handle_signals: bool = True, task_status: TaskStatus[DataPlane] = anyio.TASK_STATUS_IGNORED,
                ) -> None:
    """Load the models, start every configured transport, serve until ``stop`` (or a signal)."""
    started = time.perf_counter()
    if handle_signals:  # a SIGHUP before the handler is up (while models load) must not end the process
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _raise_file_limit()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    stop = stop or anyio.Event()
    available = plugins.transports(pm)
    selected = [available[name] for name in settings.transports]
    guard = Guard.of(settings)  # before any model loads: a key file that cannot be read stops the start
    _warn_if_exposed(settings)
    # host.yaml as it is now, validated as at start (for a reload)
    reread = functools.partial(load_settings, settings.source, {name: t.settings for name, t in available.items()})
    provider = tracing.provider_for(settings.tracing)  # before any model loads: a missing extra stops the start
    repository = await anyio.to_thread.run_sync(ModelRepository, settings, None, reread)
    if provider is not None:
        tracing.enable(provider, for_models=True)
    try:
        await repository.start()
        dataplane = _dataplane(settings, repository, guard)
        repository.on_change = dataplane.models_changed
        async with anyio.create_task_group() as background:
            if handle_signals:
                background.start_soon(_handle_signals, stop, background.cancel_scope, repository)
            if settings.watch:
                background.start_soon(_reload_on_change, repository)
            background.start_soon(dataplane.run_shadows)
            if dataplane.capture.prediction_log is not None:
                background.start_soon(dataplane.capture.prediction_log.run)
            await _serve_until_stopped(selected, dataplane, settings, stop, task_status, started)
            background.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await repository.close()
            if provider is not None:
                await tracing.close(provider)
        log.info("stopped")


def _dataplane(settings: HostSettings, repository: ModelRepository, guard: Guard) -> DataPlane:
    """The data plane, with the prediction log and feedback the settings ask for."""
    metrics = Metrics()
    prediction_log, lookup = None, None
    if settings.prediction_log is not None:
        sink = make_sink(settings.prediction_log, settings)
        prediction_log = PredictionLog(settings.prediction_log, sink, metrics)
        lookup = getattr(sink, "find", None)  # a label that came late is looked for in the log's files
    feedback = Feedback(settings.feedback, metrics, lookup) if settings.feedback is not None else None
    return DataPlane(repository.registry, metrics, repository, guard,
                     capture=Capture(repository.registry, prediction_log, feedback))


async def _serve_until_stopped(transports: list[Transport[Any]], dataplane: DataPlane, settings: HostSettings,
                               stop: anyio.Event, task_status: TaskStatus[DataPlane], started: float) -> None:
    shutdown = Shutdown()
    async with anyio.create_task_group() as tg:
        await _start_transports(tg, transports, dataplane, settings, shutdown)
        # Everything loaded so far (libraries, models: ~150k objects) lives as long as the daemon.
        # Freezing it keeps the collector's full passes from walking it again: such a pass took
        # ~75 ms and set the p99 latency under load. No full collection first: it found ~350
        # unreachable objects after loading the three models (no change in RSS) and cost ~70 ms of
        # start-up.
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
        with shutdown.until_deadline():  # one grace for both: the answers, then their records
            await dataplane.wait_idle()
            if dataplane.capture.prediction_log is not None:  # every request is answered: its records are all in
                await dataplane.capture.prediction_log.finish(settings.shutdown_grace_s)


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


async def _handle_signals(stop: anyio.Event, scope: anyio.CancelScope, repository: ModelRepository) -> None:
    """SIGTERM/SIGINT: stop (a second one: stop now). SIGHUP: reload the config."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("reloading", signal="SIGHUP")
                await reload_logged(repository)
                continue
            if stop.is_set():
                log.warning("second signal: stopping now", signal=signal.Signals(signum).name)
                scope.cancel()
                return
            log.info("stopping", signal=signal.Signals(signum).name)
            stop.set()


async def reload_logged(repository: ModelRepository) -> None:
    """Reload the config; the outcome (or why it was rejected) goes to the log, not to the caller."""
    try:
        change = await repository.reload()
    except HostdError as exc:
        log.error("reload rejected; still serving the previous config", error=exc.message)
        return
    log.info("reloaded", **change.to_dict())


async def _reload_on_change(repository: ModelRepository) -> None:
    """``watch: true``: reload when host.yaml or a file of the repository directory changes."""
    seen = repository.fingerprint()
    while True:
        await anyio.sleep(WATCH_INTERVAL_S)
        now = await anyio.to_thread.run_sync(repository.fingerprint)
        if now != seen:
            seen = now
            log.info("reloading", reason="a config file changed")
            await reload_logged(repository)


def _warn_if_exposed(settings: HostSettings) -> None:
    """A transport that listens beyond this machine with neither keys nor encryption: anyone who can
    reach the port may use it, and read what goes over it."""
    for name, section in settings.transports.items():
        host = getattr(section, "host", None)
        if host is None and isinstance(getattr(section, "bind", None), str):  # ZeroMQ: tcp://host:port
            host = urlsplit(section.bind).hostname
        encrypted = getattr(section, "tls", None) is not None or getattr(section, "curve", None) is not None
        if isinstance(host, str) and not _loopback(host) and not encrypted and settings.auth is None:
            log.warning("a transport listens beyond this machine with no API keys and no encryption",
                        transport=name, host=host, fix="add auth: keys, and tls: (curve: for zmq)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere
