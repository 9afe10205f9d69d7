"""Which loaded version answers a request that names none: the newest, a pinned default, or canary
weights; and which share of those requests is mirrored to a shadow version.

A ``Route`` is built once per change of the model set (``Registry`` rebuilds it), so choosing a
version per request is one weighted draw over a precomputed table.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from hostd.settings import RoutingSettings, ShadowSettings

V = TypeVar("V")  # what is routed to: a served model version


@dataclass(frozen=True)
class Route(Generic[V]):
    """The versions a request without a version can reach, and how it picks one."""

    default: V  # no weights: this one
    weighted: tuple[V, ...] = ()  # canary: one of these, drawn by weight
    cumulative: tuple[float, ...] = ()
    shadow: tuple[V, ShadowSettings] | None = None
    draw: Callable[[], float] = random.random

    def pick(self) -> V:
        if not self.weighted:
            return self.default
        point = self.draw() * self.cumulative[-1]
        return self.weighted[min(bisect.bisect_right(self.cumulative, point), len(self.weighted) - 1)]

    def mirror_to(self) -> V | None:
        """The shadow version for this request, if it is one of the share mirrored."""
        if self.shadow is None:
            return None
        target, settings = self.shadow
        return target if self.draw() < settings.share else None


def build_route(versions: Mapping[str, V], newest: V, settings: RoutingSettings | None,
                draw: Callable[[], float] = random.random) -> Route[V]:
    """The route over ``versions`` (the loaded ones, by version string) that ``settings`` asks for.
    A pinned or weighted version that is not loaded is left out (the newest stands in for a pinned
    one), so routing never points at a version that cannot answer."""
    if settings is None:
        return Route(newest, draw=draw)
    default = versions.get(settings.default_version or "", newest)
    weights = {version: weight for version, weight in (settings.traffic or {}).items()
               if version in versions and weight > 0}
    shadow = None
    if settings.shadow is not None and settings.shadow.version in versions:
        shadow = (versions[settings.shadow.version], settings.shadow)
    return Route(default, tuple(versions[version] for version in weights),
                 tuple(itertools.accumulate(weights.values())), shadow, draw)


def routing_problems(routing: Mapping[str, RoutingSettings], versions: Mapping[str, Iterable[str]],
                     ) -> list[tuple[str, ...]]:
    """What ``routing`` names that ``versions`` (model name -> its versions) lacks: each as the key path
    of the setting (for ``HostSettings.where``) and a sentence."""
    problems: list[tuple[str, ...]] = []
    for name, route in routing.items():
        if name not in versions:
            problems.append(("routing", name, f"routing.{name}: no model named '{name}' is configured"))
            continue
        known = set(versions[name])
        named = [("default_version", route.default_version)] if route.default_version else []
        named += [("traffic", version) for version in route.traffic or {}]
        named += [("shadow", route.shadow.version)] if route.shadow is not None else []
        for key, version in named:
            if version not in known:
                problems.append(("routing", name, key, f"routing.{name}.{key}: '{name}' has no version '{version}' "
                                                       f"(configured: {', '.join(sorted(known))})"))
    return problems
