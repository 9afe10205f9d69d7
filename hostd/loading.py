"""Model loading: import a model class, construct it, wrap it in its decorators, check the contract.

Everything here happens once per model, at load time; what it returns is the bare model object
(``registry.ServedModel`` adds what serving needs). Process workers call ``load_model`` in each
child, so this module imports nothing of the serving machinery.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from hostd.errors import ConfigError, ModelLoadError
from hostd.model import check_model
from hostd.settings import ComponentSettings, ModelSettings

#: ``where(*keys)``: "file:line" of a key inside this model's entry, e.g. where("configuration", "C").
Where = Callable[..., str]


def nowhere(*keys: Any) -> str:
    return "<settings>"


def load_model(settings: ModelSettings, where: Where = nowhere) -> Any:
    """Import, construct, decorate and check one model; ConfigError says which and why.
    A model whose own code raises is a ModelLoadError: it keeps the exception for its traceback."""
    model = construct(settings, where)
    for index, decorator in enumerate(settings.decorators):
        wrapper = construct(decorator, lambda *keys, i=index: where("decorators", i, *keys))
        try:
            model = wrapper.set_model(model)
        except Exception as exc:
            raise ModelLoadError(f"{where('decorators', index)}: decorator {decorator.class_path}: "
                                 f"{type(exc).__name__}: {exc}") from exc
    try:
        check_model(model)
    except TypeError as exc:
        raise ConfigError(f"{where('class_path')}: {settings.class_path}: {exc}") from exc
    if settings.qualified_name is not None and settings.qualified_name != model.qualified_name:
        raise ConfigError(f"{where('qualified_name')}: qualified_name '{settings.qualified_name}' does not match "
                          f"the model's own name '{model.qualified_name}'")
    return model


def declared_name(settings: ModelSettings, where: Where = nowhere) -> str | None:
    """The model's name without building it: the entry's ``qualified_name``, else the class's own
    when it is a plain class attribute (a property needs an instance). Imports the class."""
    if settings.qualified_name is not None:
        return settings.qualified_name
    return declared(settings, "qualified_name", where)


def declared(settings: ModelSettings, attribute: str, where: Where = nowhere) -> str | None:
    """A string class attribute of the entry's model class (e.g. ``version``), without building it."""
    value = getattr(import_class(settings.class_path, where("class_path")), attribute, None)
    return value if isinstance(value, str) else None


def construct(settings: ComponentSettings, where: Where = nowhere) -> Any:
    """``Class(**configuration)`` for a model or a decorator. A keyword the class does not take is
    a config error at that keyword's line; an exception from the class's own code is a ModelLoadError."""
    cls = import_class(settings.class_path, where("class_path"))
    _let_ml_base_decorators_wrap_hostd_models(cls)
    unknown = _unknown_keywords(cls, settings.configuration)
    if unknown:
        raise ConfigError("\n".join(f"{where('configuration', key)}: configuration.{key}: {settings.class_path} "
                                     f"takes no argument '{key}'" for key in unknown))
    try:
        return cls(**settings.configuration)
    except Exception as exc:
        raise ModelLoadError(f"{where('class_path')}: {settings.class_path} failed to load: "
                             f"{type(exc).__name__}: {exc}") from exc


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
        raise ModelLoadError(f"{where}: importing '{module_path}' failed: {type(exc).__name__}: {exc}") from exc
    try:
        return getattr(module, name)
    except AttributeError:
        raise ConfigError(f"{where}: module '{module_path}' has no attribute '{name}'") from None


def _unknown_keywords(cls: Any, configuration: dict[str, Any]) -> list[str]:
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a C type): let the call say
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return []
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return [key for key in configuration if key not in names]


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
