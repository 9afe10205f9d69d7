"""The model repository: every model hostd can serve, its state, and loading, unloading and reloading
at run time.

The entries are the items of ``models:`` plus one YAML file per entry in ``model_repository:``. The
``Registry`` holds what is served now; only this module changes it, one change at a time (a lock),
while requests go on: a model is built and warmed in a thread, then published in one synchronous
step; a model leaving is first unpublished (new requests no longer find it), then drained (its
admitted requests finish), then closed and its memory returned. A reload publishes the new model
before the old one leaves, so a request always finds one of them.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from collections.abc import Callable, Iterable
from pathlib import Path

import anyio
import structlog

from hostd.auth import Guard
from hostd.entries import Change, Entry, ModelState, at_startup, by_name, configured_twice, entries_of, same
from hostd.errors import ConfigError, ConfigErrors, LoadFailed, ModelNotFound
from hostd.registry import Registry, ServedModel, build_model, close_models, release_order
from hostd.routing import routing_problems
from hostd.settings import MODEL_FILE_SUFFIXES, HostSettings

log = structlog.get_logger("hostd.repository")
DRAIN_POLL_S = 0.01
#: Top-level settings the daemon builds its parts from once, at start: a reload that changes one is refused.
RESTART_KEYS = ("prediction_log", "feedback", "tracing")


class ModelRepository:
    def __init__(self, settings: HostSettings, registry: Registry | None = None,
                 reread: Callable[[], HostSettings] | None = None) -> None:
        self.settings = settings
        self.registry = registry or Registry(settings.routing)
        self.entries = entries_of(settings)  # imports the model classes: build this off the event loop
        self.on_change: Callable[[], None] = lambda: None  # the registry changed
        self._reread = reread  # the config as it is now on disk, validated
        self._lock = asyncio.Lock()

    # -- reading -----------------------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        entries = sorted(self.entries, key=lambda e: (e.name or e.settings.class_path, release_order(e.version)))
        return [entry.index() for entry in entries if not ready_only or entry.state is ModelState.READY]

    def named(self, name: str) -> list[Entry]:
        entries = [entry for entry in self.entries if entry.name == name]
        if not entries:
            known = ", ".join(sorted({e.name for e in self.entries if e.name})) or "none"
            raise ModelNotFound(f"no model named '{name}' in the repository (known: {known})")
        return entries

    # -- changing ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load what ``startup`` names (and every entry whose name is known only once built); any
        failure is fatal, reported for every entry that failed."""
        wanted = [entry for entry in self.entries if at_startup(entry, self.settings.startup)]
        async with self._lock:
            problems = await self._build_all(wanted)
            if problems:
                raise problems[0] if len(problems) == 1 else ConfigErrors(problems)
            self._publish(wanted)
            await self._enforce_policy()
            self.on_change()
        versions: dict[str, list[str]] = {}
        for entry in self.entries:
            versions.setdefault(entry.name or entry.settings.class_path, []).append(entry.version)
        for *path, message in routing_problems(self.settings.routing, versions):
            # Not fatal: the version may be loaded later; until then routing leaves it out.
            log.warning("routing names what is not there", where=self.settings.where(tuple(path)), problem=message)

    async def load(self, name: str) -> None:
        """Load every entry of model ``name`` as the config and the repository directory say now
        (so a file added or changed there is picked up); if it is loaded, reload it, new before old."""
        fresh = await self._read_entries() if self._reread is not None else None
        async with self._lock:
            before = self.named(name) if fresh is None else [entry for entry in self.entries if entry.name == name]
            entries = before if fresh is None else [entry for entry in fresh if entry.name == name]
            if not entries:
                self.named(name)  # MODEL_NOT_FOUND, naming the models there are
            try:
                await self._load(entries, replacing=before)
            except LoadFailed as exc:
                self._keep_after_failure(name, before, entries, exc)
                raise
            self.entries = [entry for entry in self.entries if entry.name != name] + entries
            await self._enforce_policy()
            self.on_change()

    async def unload(self, name: str) -> None:
        """Stop serving model ``name``: no new requests, admitted ones finish, then it is closed."""
        async with self._lock:
            entries = self.named(name)
            serving = [entry.served for entry in entries if entry.served is not None]
            for entry in entries:
                entry.state = ModelState.UNLOADING if entry.served is not None else entry.state
            await self._retire(serving, "unloaded")
            for entry in entries:
                entry.served, entry.state, entry.reason = None, ModelState.UNAVAILABLE, "unloaded"
            self.on_change()

    async def apply(self, settings: HostSettings) -> Change:
        """Serve ``settings`` instead of the current ones: new models load, removed ones unload,
        changed ones reload (new before old); unchanged ones are left as they are. A model that
        fails to load is reported and leaves what served before serving."""
        new = await anyio.to_thread.run_sync(entries_of, settings)
        async with self._lock:
            change, kept = Change(), []
            old_by_name = by_name(self.entries)
            for name, entries in by_name(new).items():
                before = old_by_name.pop(name, [])
                if same(before, entries):
                    kept += before
                    continue
                serving = any(entry.served is not None for entry in before)
                try:
                    await self._load(entries, replacing=before)
                except LoadFailed as exc:
                    change.failed[name] = exc.message
                    kept += self._keep_after_failure(name, before, entries, exc)
                    continue
                (change.reloaded if serving else change.loaded).append(name)
                kept += entries
            for name, entries in old_by_name.items():  # no longer configured
                await self._retire([entry.served for entry in entries if entry.served is not None], "removed")
                change.unloaded.append(name)
            self.settings, self.entries = settings, kept
            self.registry.set_routing(settings.routing)
            await self._enforce_policy()
            self.on_change()
            return change

    async def reload(self) -> Change:
        """Re-read the config (and the repository directory) and apply it. A config that does not
        validate, or that changes the transports, is rejected whole: nothing changes."""
        if self._reread is None:
            raise LoadFailed("this daemon was not started from a config file: nothing to reload")
        try:
            settings = await anyio.to_thread.run_sync(self._reread)
            Guard.of(settings)  # the key files it names must be readable
        except ConfigError as exc:
            raise LoadFailed(f"the new config was rejected; still serving the previous one:\n{exc}") from None
        changed = [f"transports ({', '.join(names)})" for names in [sorted(
            name for name in settings.transports.keys() | self.settings.transports.keys()
            if settings.transports.get(name) != self.settings.transports.get(name))] if names]
        changed += [key for key in RESTART_KEYS if getattr(settings, key) != getattr(self.settings, key)]
        if changed:
            raise LoadFailed(f"the new config changes {', '.join(changed)}, which needs a restart; "
                             "nothing was applied, still serving the previous config")
        try:
            return await self.apply(settings)
        except ConfigError as exc:  # a repository file, a class that cannot be imported
            raise LoadFailed(f"the new config was rejected; still serving the previous one:\n{exc}") from None

    def fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        """The config file's and the repository files' (path, mtime, size): changes when one does."""
        paths = [Path(self.settings.source)]
        directory = self.settings.repository_path()
        if directory is not None and directory.is_dir():
            paths += sorted(path for path in directory.iterdir() if path.suffix in MODEL_FILE_SUFFIXES)
        stamps = []
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            stamps.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(stamps)

    async def close(self) -> None:
        async with self._lock:
            serving = [entry.served for entry in self.entries if entry.served is not None]
            await anyio.to_thread.run_sync(close_models, serving)
            for entry in self.entries:
                entry.served, entry.state, entry.reason = None, ModelState.UNAVAILABLE, "stopped"

    # -- the steps ---------------------------------------------------------------------------------

    async def _read_entries(self) -> list[Entry]:
        """The entries as the files say now (the config is re-read and validated)."""
        assert self._reread is not None
        try:
            settings = await anyio.to_thread.run_sync(self._reread)
            return await anyio.to_thread.run_sync(entries_of, settings)
        except ConfigError as exc:
            raise LoadFailed(f"the config was rejected:\n{exc}") from None

    def _keep_after_failure(self, name: str, before: list[Entry], tried: list[Entry], exc: LoadFailed) -> list[Entry]:
        """After a failed load of ``name``: the entries that go on (those serving, else the ones tried,
        whose reason says why), put in the index in place of ``before``."""
        serving = [entry for entry in before if entry.served is not None]
        for entry in serving:
            entry.reason = f"reload failed: {exc.message}"
        kept = serving or tried
        self.entries = [entry for entry in self.entries if entry.name != name] + kept
        return kept

    async def _load(self, entries: list[Entry], replacing: Iterable[Entry] = ()) -> None:
        """Build ``entries``, publish them, then retire what they and ``replacing`` served before."""
        problems = await self._build_all(entries)
        if problems:
            raise LoadFailed("; ".join(str(problem) for problem in problems))
        old = [entry.served for entry in [*entries, *replacing] if entry.served is not None]
        self._publish(entries)
        await self._retire(old, "replaced")

    async def _build_all(self, entries: list[Entry]) -> list[ConfigError]:
        """Build and warm each entry in a thread (LOADING until published). If any fails, none is
        kept: the problems are returned and every entry goes on as it was."""
        problems = []
        for entry in entries:
            entry.state = ModelState.LOADING if entry.served is None else entry.state
            try:
                entry.built = await anyio.to_thread.run_sync(_build, entry)
            except ConfigError as exc:
                problems.append(exc)
                entry.reason = f"load failed: {exc}"
                log.error("model failed to load", entry=entry.where(), error=str(exc))
        problems += configured_twice(entries)
        if problems:
            built = [entry.built for entry in entries if entry.built is not None]
            await anyio.to_thread.run_sync(close_models, built)
            for entry in entries:
                entry.built = None
                entry.state = ModelState.READY if entry.served is not None else ModelState.UNAVAILABLE
        return problems

    def _publish(self, entries: list[Entry]) -> None:
        """Serve each entry's built model, in one synchronous step."""
        for entry in entries:
            built, entry.built = entry.built, None
            assert built is not None
            self.registry.add(built)
            entry.served, entry.name, entry.known_version = built, built.name, built.version
            entry.state, entry.reason = ModelState.READY, ""
        log.info("serving", models=[f"{m.name}:{m.version}" for m in self.registry])

    async def _enforce_policy(self) -> None:
        """routing.serve_newest: a name's versions beyond its newest N leave (drained, then closed)."""
        for name, routing in self.settings.routing.items():
            if routing.serve_newest is None:
                continue
            serving = [entry for entry in self.entries if entry.name == name and entry.served is not None]
            serving.sort(key=lambda entry: release_order(entry.version), reverse=True)
            older = serving[routing.serve_newest:]
            await self._retire([entry.served for entry in older if entry.served is not None], "routing.serve_newest")
            for entry in older:
                entry.served, entry.state = None, ModelState.UNAVAILABLE
                entry.reason = f"not among the newest {routing.serve_newest} versions (routing.serve_newest)"

    async def _retire(self, models: list[ServedModel], why: str) -> None:
        """Unpublish, drain (admitted requests finish, within shutdown_grace_s), close ``models``."""
        if not models:
            return
        for served in models:
            if _still_served(self.registry, served):
                self.registry.remove(served.name, served.version)
        with anyio.move_on_after(self.settings.shutdown_grace_s):
            while any(served.pending for served in models):
                await anyio.sleep(DRAIN_POLL_S)
        for served in models:
            if served.cache is not None:  # its answers go with it (a reload's model may answer otherwise)
                await served.cache.drop()
        await anyio.to_thread.run_sync(close_models, models)
        for served in models:
            log.info("model closed", model=served.name, version=served.version, why=why)
        models.clear()  # the last references to them here: their memory can go
        await anyio.to_thread.run_sync(_return_memory)


def _still_served(registry: Registry, served: ServedModel) -> bool:
    try:
        return registry.get(served.name, served.version) is served
    except ModelNotFound:
        return False


def _build(entry: Entry) -> ServedModel:
    """The entry's model, built and warmed (process workers started), checked against its name."""
    served = build_model(entry.settings, entry.where)
    try:
        if entry.name is not None and served.name != entry.name:
            raise ConfigError(f"{entry.where('class_path')}: the model's name is '{served.name}', not "
                              f"'{entry.name}' (its qualified_name, or its repository file's name)")
        if served.processes is not None:
            served.processes.warm_up()
    except ConfigError:
        close_models([served])
        raise
    except Exception as exc:
        close_models([served])
        raise ConfigError(f"{entry.where('workers')}: the model's worker processes failed to start: "
                          f"{type(exc).__name__}: {exc}") from exc
    return served


def _return_memory() -> None:
    """A closed model's objects are garbage now, but the daemon froze everything loaded at start
    (gc.freeze(): the collector skips them) and glibc keeps freed pages: collect once with them
    unfrozen, freeze again, and hand free pages back to the system, so unloading shows in RSS."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
