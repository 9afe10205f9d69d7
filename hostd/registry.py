"""Models by name, then by version: build them from settings, look them up, close them."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from hostd.batching import Batcher
from hostd.errors import ConfigError, ModelNotFound
from hostd.model import batch_function, check_model, is_deterministic
from hostd.settings import ComponentSettings, HostSettings, ModelSettings
from hostd.workers import ProcessWorkers

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

    def __post_init__(self) -> None:
        self.name = str(self.model.qualified_name)
        self.version = str(self.model.version)
        self.deterministic = is_deterministic(self.model)
        self.is_async = inspect.iscoroutinefunction(self.model.predict)
        self.predict_batch = batch_function(self.model)
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
                                   timeout_s=self.settings.timeout_ms / 1000, name=self.name)

    async def run_batch(self, inputs: list[Any]) -> list[Any]:
        """One predict_batch call in a worker thread (or process), so CPU-bound models never block the loop."""
        if self.processes is not None:
            return await self.processes.run(inputs)
        # At most workers.count calls run at once; a call whose caller gave up (timeout) is abandoned
        # but keeps its thread until the model returns, so a stuck model cannot pile up threads.
        return await asyncio.get_running_loop().run_in_executor(self.threads, self.predict_batch, inputs)

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
    def __init__(self) -> None:
        self._models: dict[str, dict[str, ServedModel]] = {}
        self._latest: dict[str, ServedModel] = {}  # what a request without a version gets

    @classmethod
    def from_settings(cls, settings: HostSettings) -> Registry:
        registry = cls()
        for index, model_settings in enumerate(settings.models):
            where = settings.where(("models", index))
            served = build_model(model_settings, where)
            if registry.add(served) is not None:
                raise ConfigError(f"{where}: {served.name} {served.version} is configured twice")
        return registry

    def add(self, served: ServedModel) -> ServedModel | None:
        """Serve ``served``; return the model it replaces (same name and version), if any."""
        versions = self._models.setdefault(served.name, {})
        previous = versions.get(served.version)
        versions[served.version] = served
        self._latest[served.name] = versions[max(versions, key=_version_key)]
        return previous

    def remove(self, name: str, version: str) -> ServedModel:
        served = self.get(name, version)
        versions = self._models[name]
        del versions[version]
        if versions:
            self._latest[name] = versions[max(versions, key=_version_key)]
        else:
            del self._models[name], self._latest[name]
        return served

    def get(self, name: str, version: str | None = None) -> ServedModel:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' is not served here (served: {', '.join(self.names()) or 'none'})")
        if not version:
            return self._latest[name]
        if version not in versions:
            raise ModelNotFound(f"model '{name}' has no version '{version}' (served: {', '.join(versions)})")
        return versions[version]

    def names(self) -> list[str]:
        return sorted(self._models)

    def __iter__(self) -> Iterator[ServedModel]:
        for name in self.names():
            yield from sorted(self._models[name].values(), key=lambda served: _version_key(served.version))

    def __len__(self) -> int:
        return sum(len(versions) for versions in self._models.values())

    def warm_up(self) -> None:
        """Start process workers and load the model in each (blocking)."""
        for served in self:
            if served.processes is not None:
                served.processes.warm_up()

    def close(self) -> None:
        for served in self:
            served.threads.shutdown(wait=False, cancel_futures=True)
            if served.processes is not None:
                served.processes.close()
            close = getattr(served.model, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.exception("model close failed", model=served.name, version=served.version)


def build_model(settings: ModelSettings, where: str = "") -> ServedModel:
    """Import, construct, decorate and check one model; ConfigError says which and why."""
    model_class = import_class(settings.class_path, where)
    try:
        model = model_class(**settings.configuration)
    except Exception as exc:
        raise ConfigError(f"{where}: {settings.class_path} failed to load: {type(exc).__name__}: {exc}") from exc
    for decorator in settings.decorators:
        model = apply_decorator(model, decorator, where)
    try:
        check_model(model)
    except TypeError as exc:
        raise ConfigError(f"{where}: {settings.class_path}: {exc}") from exc
    if settings.qualified_name is not None and settings.qualified_name != model.qualified_name:
        raise ConfigError(f"{where}: qualified_name '{settings.qualified_name}' does not match the model's "
                          f"own name '{model.qualified_name}'")
    return ServedModel(model, settings)


def apply_decorator(model: Any, settings: ComponentSettings, where: str = "") -> Any:
    decorator_class = import_class(settings.class_path, where)
    _let_ml_base_decorators_wrap_hostd_models(decorator_class)
    try:
        return decorator_class(**settings.configuration).set_model(model)
    except Exception as exc:
        raise ConfigError(f"{where}: decorator {settings.class_path}: {type(exc).__name__}: {exc}") from exc


def import_class(class_path: str, where: str = "") -> Any:
    """Import ``package.module:Class`` or ``package.module.Class``."""
    module_path, _, name = class_path.rpartition(":") if ":" in class_path else class_path.rpartition(".")
    if not module_path or not name:
        raise ConfigError(f"{where}: class_path '{class_path}' should look like 'package.module:Class'")
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import '{class_path}': {exc}") from exc
    except Exception as exc:  # the module itself raised while importing (or has a syntax error)
        raise ConfigError(f"{where}: importing '{module_path}' failed: {type(exc).__name__}: {exc}") from exc
    try:
        return getattr(module, name)
    except AttributeError:
        raise ConfigError(f"{where}: module '{module_path}' has no attribute '{name}'") from None


def _let_ml_base_decorators_wrap_hostd_models(decorator_class: type) -> None:
    # ml_base decorators check isinstance(model, ml_base.MLModel) in set_model(); hostd models
    # have the same contract, so register them as virtual subclasses (an ABC feature).
    try:
        from ml_base import MLModel as MLBaseModel
    except ImportError:
        return
    if issubclass(decorator_class, MLBaseModel):
        from hostd.model import MLModel

        MLBaseModel.register(MLModel)


def _version_key(version: str) -> tuple[Any, ...]:
    parts = version.lstrip("v").split("-", 1)[0].split("+", 1)[0].split(".")
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts)
