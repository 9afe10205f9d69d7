"""The model entries hostd knows (the items of ``models:`` and the files of ``model_repository:``), the
state each is in, and what a change of them did. hostd.repository loads and unloads them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hostd.errors import ConfigError, ConfigErrors
from hostd.loading import Where, declared, declared_name
from hostd.registry import ServedModel
from hostd.settings import HostSettings, ModelSettings


class ModelState(str, Enum):
    """As the Open Inference Protocol's repository extension names them (Triton, MLServer)."""

    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


@dataclass(eq=False)
class Entry:
    """One model entry and what became of it."""

    settings: ModelSettings
    where: Where  # where(*keys): file:line of a key in the entry
    name: str | None  # known before loading (declared), else once built
    known_version: str = ""  # the class's own (a plain attribute), then the last one built
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = "not loaded"
    served: ServedModel | None = None  # what it serves now
    built: ServedModel | None = None  # built, not yet published

    @property
    def version(self) -> str:
        return self.served.version if self.served is not None else self.known_version

    def index(self) -> dict[str, str]:
        return {"name": self.name or self.settings.class_path, "version": self.version, "state": self.state.value,
                "reason": self.reason}


@dataclass
class Change:
    """What applying new settings did, by model name."""

    loaded: list[str] = field(default_factory=list)
    reloaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "reloaded": self.reloaded, "unloaded": self.unloaded, "failed": self.failed}


def entries_of(settings: HostSettings) -> list[Entry]:
    """The entries of ``models:`` and of the repository directory, with the names they declare (a
    repository file's name, if the model does not say). Imports the model classes."""
    entries, problems = [], []
    for model in settings.model_entries():
        try:
            entries.append(Entry(model.settings, model.where, declared_name(model.settings, model.where)
                                 or model.file_name, declared(model.settings, "version", model.where) or ""))
        except ConfigError as exc:
            problems.append(exc)
    if problems:
        raise problems[0] if len(problems) == 1 else ConfigErrors(problems)
    return entries


def configured_twice(entries: list[Entry]) -> list[ConfigError]:
    """Two entries built into the same model name and version: one would hide the other."""
    first: dict[tuple[str, str], Entry] = {}
    problems = []
    for entry in entries:
        if entry.built is None:
            continue
        key = (entry.built.name, entry.built.version)
        if key in first:
            problems.append(ConfigError(f"{entry.where()}: {key[0]} {key[1]} is configured twice (also at "
                                        f"{first[key].where()})"))
        first.setdefault(key, entry)
    return problems


def at_startup(entry: Entry, startup: str | list[str]) -> bool:
    if entry.name is None or startup == "all":
        return True
    return startup != "none" and entry.name in startup


def by_name(entries: Iterable[Entry]) -> dict[str, list[Entry]]:
    named: dict[str, list[Entry]] = {}
    for entry in entries:
        named.setdefault(entry.name or entry.settings.class_path, []).append(entry)
    return named


def same(before: list[Entry], after: list[Entry]) -> bool:
    def key(entries: list[Entry]) -> list[str]:
        return sorted(entry.settings.model_dump_json() for entry in entries)
    return key(before) == key(after)
