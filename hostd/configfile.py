"""Reading host.yaml and a model repository's files: YAML with each key's line kept, ``${VAR}`` and
``${VAR:-default}`` from the environment, ``HOSTD_`` variables overriding keys, and validation errors that
name the file, the line and the key (hostd.settings is the schema they are validated against)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from hostd.errors import ConfigError
from hostd.settings import HostSettings, Loc, ModelSettings, where_in

ENV_PREFIX = "HOSTD_"
#: HOSTD_ variables that are not config overrides: the config's path, the key `hostd reload` sends, and
#: where the runtimes keep copies of remote model files (hostd.runtimes.artifact).
NOT_OVERRIDES = frozenset({"HOSTD_CONFIG", "HOSTD_API_KEY", "HOSTD_ARTIFACT_CACHE"})
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_settings(path: str | os.PathLike[str], transports: Mapping[str, type[BaseModel]] | None = None,
                  environ: Mapping[str, str] | None = None) -> HostSettings:
    """Read, interpolate and validate a host.yaml; ``transports`` validates each transport section."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config: {exc.strerror}") from exc
    return parse_settings(text, source, transports, os.environ if environ is None else environ)


def load_model_file(path: Path, environ: Mapping[str, str] | None = None,
                    ) -> tuple[ModelSettings, Callable[..., str]]:
    """One model entry from a repository file (the keys of an item of ``models:``), and ``where(*keys)``
    giving the ``file:line`` of a key in it."""
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read model file: {exc.strerror}") from exc
    raw, lines = _read_yaml(text, source, "a model file is one mapping with a 'class_path' key")
    raw = _interpolate(raw, (), os.environ if environ is None else environ, source, lines)
    try:
        settings = ModelSettings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, lines)) from None
    return settings, lambda *keys: where_in(source, lines, keys)


def parse_settings(text: str, source: str, transports: Mapping[str, type[BaseModel]] | None = None,
                   environ: Mapping[str, str] | None = None) -> HostSettings:
    environ = {} if environ is None else environ
    raw, lines = _read_yaml(text, source, "the top level must be a mapping with a 'models' key")
    raw = _interpolate(raw, (), environ, source, lines)
    overridden = _apply_env_overrides(raw, environ)
    try:
        settings = HostSettings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, lines, overridden=overridden)) from None
    settings._source, settings._lines = source, lines
    if transports is not None:
        settings.transports = _validate_transports(settings, transports)
    return settings


def _read_yaml(text: str, source: str, not_a_mapping: str) -> tuple[dict[str, Any], dict[Loc, int]]:
    """The YAML mapping in ``text`` and the line of each key path in it."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
    lines: dict[Loc, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {not_a_mapping}")
    return raw, lines


def _validate_transports(settings: HostSettings, known: Mapping[str, type[BaseModel]]) -> dict[str, Any]:
    validated = {}
    for name, section in settings.transports.items():
        if name not in known:
            installed = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"{settings.where(('transports', name))}: transports.{name}: no such transport "
                              f"is installed (installed: {installed})")
        try:
            validated[name] = known[name].model_validate(section or {})
        except ValidationError as exc:
            raise ConfigError(_describe(exc, settings._source, settings._lines, ("transports", name))) from None
    return validated


def _index_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*loc, key.value)
            _index_lines(value, child, lines)
            lines[child] = key.start_mark.line + 1  # point at the key, not its value
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*loc, index), lines)


def _describe(exc: ValidationError, source: str, lines: Mapping[Loc, int], prefix: Loc = (),
              overridden: Mapping[Loc, str] | None = None) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        loc = (*prefix, *error["loc"])
        variable = next((name for path, name in (overridden or {}).items() if loc[:len(path)] == path), None)
        dotted = ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in loc).replace(".[", "[")
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling)"
        where = f"environment variable {variable}" if variable else where_in(source, lines, loc)
        problems.append(f"{where}: {dotted or '<top>'}: {message}")
    return "\n".join(problems)


def _interpolate(value: Any, loc: Loc, environ: Mapping[str, str], source: str, lines: Mapping[Loc, int]) -> Any:
    if isinstance(value, dict):
        return {key: _interpolate(item, (*loc, key), environ, source, lines) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, (*loc, index), environ, source, lines) for index, item in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        return _VAR.sub(lambda match: _lookup(match, loc, environ, source, lines), value)
    return value


def _lookup(match: re.Match[str], loc: Loc, environ: Mapping[str, str], source: str,
            lines: Mapping[Loc, int]) -> str:
    name, default = match.group(1), match.group(2)
    if name in environ:
        return environ[name]
    if default is not None:
        return default
    raise ConfigError(f"{where_in(source, lines, loc)}: environment variable {name} is not set "
                      f"(write ${{{name}:-default}} to give a default)")


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[Loc, str]:
    """``HOSTD_SHUTDOWN_GRACE_S=5`` or ``HOSTD_TRANSPORTS__HTTP__PORT=9000`` override keys.

    Returns the overridden key paths and the variables that set them, for error messages.
    """
    overridden: dict[Loc, str] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_OVERRIDES:
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        target = raw
        for key in path[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{name}: '{key}' is not a mapping in the config")
        target[path[-1]] = yaml.safe_load(text)
        overridden[tuple(path)] = name
    return overridden
