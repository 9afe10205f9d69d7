"""Models by name, then by version: build them from settings, look them up, close them."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import importlib.util
import inspect
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
from packaging.version import InvalidVersion, Version

from hostd.cache import PredictionCache, uncacheable_fields
from hostd.errors import ConfigError, ConfigErrors, ModelNotFound
from hostd.feedback import Target, target_of
from hostd.loading import Where, declared_name, load_model, nowhere
from hostd.microbatch import Batcher
from hostd.model import batch_function, is_deterministic
from hostd.process_workers import ProcessWorkers
from hostd.routing import Route, build_route, routing_problems
from hostd.settings import HostSettings, ModelSettings, RoutingSettings

log = structlog.get_logger("hostd.registry")


@dataclass(eq=False)
class ServedModel:
    """One loaded model version and what the data plane needs to run it."""

    model: Any
    settings: ModelSettings
    name: str = field(init=False)
    version: str = field(init=False)
    deterministic: bool = field(init=False)
    is_async: bool = field(init=False)
    predict_batch: Callable[[list[Any]], list[Any]] = field(init=False)
    threads: ThreadPoolExecutor = field(init=False)
    batcher: Batcher | None = field(init=False)
    processes: ProcessWorkers | None = field(init=False)
    pending: int = 0
    feedback_target: Target | None = field(init=False)
    fingerprint: str = field(init=False)  # the output field a ground-truth label is compared with
    # Attached by the data plane, whose metrics it counts with (settings.cache: None, never one).
    cache: PredictionCache | None = None
    # Replaced or unloaded: no longer in the registry. A request that looked it up just before
    # looks again (DataPlane) rather than run on a model about to close.
    retired: bool = False

    def __post_init__(self) -> None:
        self.name = str(self.model.qualified_name)
        self.version = str(self.model.version)
        self.deterministic = is_deterministic(self.model)
        self.is_async = inspect.iscoroutinefunction(self.model.predict)
        self.predict_batch = batch_function(self.model)
        self.feedback_target = target_of(self.model.output_schema, self.settings.feedback)
        # What the version was built from: equal in every replica serving the same config.
        built_from = self.settings.model_dump_json(include={"class_path", "configuration", "decorators"})
        self.fingerprint = hashlib.sha256(built_from.encode()).hexdigest()[:16]
        self.threads = ThreadPoolExecutor(self.settings.workers.count, thread_name_prefix=f"hostd-{self.name}")
        self.processes = None
        if self.settings.workers.kind == "process":
            # No process starts until warm_up() or the first call (`hostd check` starts none).
            self.processes = ProcessWorkers(self.settings.model_dump(), self.settings.workers.count, self.name)
        batching = self.settings.batching
        self.batcher = None
        if batching.max_batch_size > 1 and not self.is_async:
            self.batcher = Batcher(self.run_batch, max_batch_size=batching.max_batch_size,
                                   max_delay_s=batching.max_delay_ms / 1000, workers=self.settings.workers.count,
                                   name=self.name, version=self.version)

    async def run_batch(self, inputs: list[Any]) -> list[Any]:
        """One predict_batch call in a worker thread (or process), so CPU-bound models never block the
        loop; an async model is awaited on the loop."""
        if self.is_async:
            return await self.run_here(inputs)
        if self.processes is not None:
            return await self.processes.run(inputs)
        # At most workers.count calls run at once; a call whose caller gave up (timeout) is abandoned
        # but keeps its thread until the model returns, so a stuck model cannot pile up threads.
        # In the caller's context (as anyio.to_thread does): a traced request's span is the model's current one.
        return await asyncio.get_running_loop().run_in_executor(self.threads, contextvars.copy_context().run,
                                                                self.predict_batch, inputs)

    async def run_here(self, inputs: list[Any]) -> list[Any]:
        """The same call in this thread (``hostd batch``: nothing else shares the process)."""
        if self.is_async:
            return [await self.model.predict(item) for item in inputs]
        return list(self.predict_batch(inputs))

    def metadata(self) -> dict[str, Any]:
        return {
            "display_name": self.model.display_name,
            "qualified_name": self.name,
            "description": self.model.description,
            "version": self.version,
            "deterministic": self.deterministic,
            "input_schema": self.model.input_schema.model_json_schema(),
            "output_schema": self.model.output_schema.model_json_schema(),
        }


class Registry:
    """What is served now: models by name, then version, and the route a request without a version
    takes. Changes (``add``, ``remove``) are synchronous, so a request on the event loop sees the
    set before a change or after it, never half of it."""

    def __init__(self, routing: Mapping[str, RoutingSettings] | None = None) -> None:
        self._models: dict[str, dict[str, ServedModel]] = {}
        self._routes: dict[str, Route[ServedModel]] = {}  # what a request without a version gets
        self.routing: dict[str, RoutingSettings] = dict(routing or {})
        self.generation = 0  # counts changes, for what is derived from the model set (the OpenAPI document)
        # Models from_settings(only=...) did not keep: "name version" (loaded, then closed) or "name".
        self.passed_over: list[str] = []

    @classmethod
    def from_settings(cls, settings: HostSettings, only: str | None = None) -> Registry:
        """Load every model in ``settings`` (or only the entries that may be model ``only``). Every
        model is tried, so one run reports every broken entry, not just the first."""
        registry, problems = cls(settings.routing), []
        for model_settings, where, file_name in settings.model_entries():
            try:
                name = declared_name(model_settings, where) or file_name
                if only is not None and name not in (None, only):
                    registry.passed_over.append(name)
                    continue
                served = build_model(model_settings, where)
            except ConfigError as exc:
                problems.append(exc)
                continue
            if only is not None and served.name != only:
                registry.passed_over.append(f"{served.name} {served.version}")
                close_models([served])
            elif registry.add(served) is not None:
                problems.append(ConfigError(f"{where()}: {served.name} {served.version} is configured twice"))
        if only is None:
            versions = {name: [m.version for m in registry if m.name == name] for name in registry.names()}
            problems += [ConfigError(f"{settings.where(tuple(path))}: {message}")
                         for *path, message in routing_problems(settings.routing, versions)]
        if problems:
            registry.close()
            raise problems[0] if len(problems) == 1 else ConfigErrors(problems)
        return registry

    def add(self, served: ServedModel) -> ServedModel | None:
        """Serve ``served``; return the model it replaces (same name and version), if any."""
        versions = self._models.setdefault(served.name, {})
        previous = versions.get(served.version)
        versions[served.version] = served
        self._reroute(served.name)
        if previous is not None:
            previous.retired = True
        return previous

    def remove(self, name: str, version: str) -> ServedModel:
        served = self.get(name, version)
        versions = self._models[name]
        del versions[version]
        self._reroute(name)
        served.retired = True
        return served

    def set_routing(self, routing: Mapping[str, RoutingSettings]) -> None:
        self.routing = dict(routing)
        for name in self._models:
            self._reroute(name)

    def _reroute(self, name: str) -> None:
        self.generation += 1
        versions = self._models.get(name)
        if not versions:
            self._models.pop(name, None)
            self._routes.pop(name, None)
            return
        self._routes[name] = build_route(versions, _newest(versions), self.routing.get(name))

    def route(self, name: str) -> Route[ServedModel] | None:
        """How a request for ``name`` without a version picks one (None: not served)."""
        return self._routes.get(name)

    def get(self, name: str, version: str | None = None) -> ServedModel:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' is not served here (served: {', '.join(self.names()) or 'none'})")
        if not version:
            return self._routes[name].pick()
        if version not in versions:
            raise ModelNotFound(f"model '{name}' has no version '{version}' (served: {', '.join(versions)})")
        return versions[version]

    def current(self, served: ServedModel, requested: str | None) -> ServedModel:
        """What now serves a request that looked up ``served`` (since retired) for ``requested``."""
        return self.get(served.name, requested)

    def names(self) -> list[str]:
        return sorted(self._models)

    def __iter__(self) -> Iterator[ServedModel]:
        for name in self.names():
            yield from sorted(self._models[name].values(), key=lambda served: release_order(served.version))

    def __len__(self) -> int:
        return sum(len(versions) for versions in self._models.values())

    def warm_up(self) -> None:
        """Start process workers and load the model in each (blocking)."""
        for served in self:
            if served.processes is not None:
                served.processes.warm_up()

    def close(self) -> None:
        close_models(list(self))


def close_models(models: list[ServedModel]) -> None:
    """Stop each model's threads and processes and call its ``close()``, if it has one."""
    for served in models:
        served.threads.shutdown(wait=False, cancel_futures=True)
        if served.processes is not None:
            served.processes.close()
        close = getattr(served.model, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                log.exception("model close failed", model=served.name, version=served.version)


def build_model(settings: ModelSettings, where: Where = nowhere) -> ServedModel:
    """Load one model (see hostd.loading) and make it servable."""
    if settings.cache is not None and settings.cache.backend == "redis" and importlib.util.find_spec("redis") is None:
        raise ConfigError(f"{where('cache')}: cache: the redis backend needs redis-py: pip install 'hostd[redis]'")
    model = load_model(settings, where)
    if settings.cache is not None and not is_deterministic(model):
        raise ConfigError(f"{where('cache')}: model '{model.qualified_name}' is not deterministic (deterministic = "
                          "False: the same input may give another answer), so it cannot be cached; remove cache:")
    if settings.cache is not None and (hidden := uncacheable_fields(model.input_schema)):
        raise ConfigError(f"{where('cache')}: model '{model.qualified_name}' cannot be cached: its input's "
                          f"{', '.join(hidden)} would not be part of the key (excluded, or a secret)")
    try:
        return ServedModel(model, settings)
    except ValueError as exc:  # feedback.field names no output field
        raise ConfigError(f"{where('feedback')}: {exc}") from None


@functools.cache
def version_key(version: str) -> Version | tuple[int, str]:
    """Versions in release order (``packaging``: 1.0.0rc1 < 1.0.0 < 1.0.1 < 1.10.0); a version that is
    not PEP 440 sorts below every one that is, by its text."""
    try:
        return Version(version)
    except InvalidVersion:
        return (0, version)


def _newest(versions: dict[str, ServedModel]) -> ServedModel:
    return versions[max(versions, key=release_order)]


def release_order(version: str) -> tuple[int, Any]:
    """A sort key putting versions in release order (see version_key)."""
    key = version_key(version)
    return (0, key) if isinstance(key, tuple) else (1, key)
