"""The numbers of the dashboard (/api/stats): the Prometheus registry that /metrics serves, read now and
as it was some seconds ago, turned into figures per model and transport.

There is no second set of counters. A Snapshot is what the registry holds at one moment; a rate is the
difference of two snapshots over the time between them, and a latency quantile is read from the
difference of their histogram buckets, as Prometheus' ``histogram_quantile(q, rate(x_bucket[w]))`` does,
so the page and a Grafana panel agree. Stats keeps a small ring of snapshots, at most one a second over
the window, taken when a report is asked for: no background task, and nothing at all while nobody looks.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

Json = dict[str, Any]
Buckets = dict[float, float]  # a histogram's upper bounds (+Inf included) -> cumulative count
K = TypeVar("K")


def _object(**properties: Json) -> Json:
    return {"type": "object", "required": list(properties), "properties": properties}


_NUMBER, _MAYBE = {"type": "number"}, {"type": ["number", "null"]}
_BY_NAME = {"type": "object", "additionalProperties": _NUMBER}
_FIGURES = _object(requests=_NUMBER, codes=_BY_NAME, per_s=_MAYBE, p50_ms=_MAYBE, p99_ms=_MAYBE, error_rate=_MAYBE,
                   errors=_BY_NAME)
#: The JSON Schema of a report (what /api/stats answers; its OpenAPI document shows it).
SCHEMA = _object(window_s=_NUMBER, models_loaded=_NUMBER, models={"type": "array", "items": _object(
    name={"type": "string"},
    versions={"type": "array", "items": _object(
        version={"type": "string"}, state={"type": "string"}, reason={"type": "string"},
        cache={"anyOf": [{"type": "null"}, _object(hits=_NUMBER, misses=_NUMBER, hit_rate=_MAYBE)]})},
    pending=_NUMBER, all=_FIGURES, transports={"type": "object", "additionalProperties": _FIGURES},
    batches=_object(calls=_NUMBER, rows=_NUMBER, per_s=_MAYBE, mean_rows=_MAYBE, sizes=_BY_NAME),
    history=_object(t={"type": "array", "items": _NUMBER}, per_s={"type": "array", "items": _MAYBE},
                    p99_ms={"type": "array", "items": _MAYBE}))})


@dataclass(frozen=True, slots=True)
class Traffic:
    """Requests one model answered on one transport (or on all): counts by code, and latency buckets."""

    codes: dict[str, float] = field(default_factory=dict)
    buckets: Buckets = field(default_factory=dict)

    def requests(self) -> float:
        return sum(self.codes.values(), 0.0)


@dataclass(slots=True)
class Snapshot:
    """The samples the dashboard reads, at ``at`` (seconds on the Stats clock)."""

    at: float
    traffic: dict[str, dict[str, Traffic]]  # model -> transport -> its requests
    batches: dict[str, Buckets]  # model -> rows per model call (hostd_batch_rows)
    batch_rows: dict[str, float]  # model -> rows in all its calls (the histogram's sum)
    pending: dict[str, float]  # model -> requests admitted and not yet answered
    cache: dict[tuple[str, str], dict[str, float]]  # (model, version) -> result (hit, miss) -> rows

    @classmethod
    def of(cls, registry: CollectorRegistry, at: float) -> Snapshot:
        snapshot = cls(at, {}, {}, {}, {}, {})
        for family in registry.collect():
            for sample in family.samples:
                snapshot._add(sample.name, sample.labels, sample.value)
        return snapshot

    def _add(self, name: str, labels: dict[str, str], value: float) -> None:
        model = labels.get("model", "")
        if name == "hostd_requests_total":
            self._traffic(model, labels["transport"]).codes[labels["code"]] = value
        elif name == "hostd_request_duration_seconds_bucket":
            self._traffic(model, labels["transport"]).buckets[float(labels["le"])] = value
        elif name == "hostd_batch_rows_bucket":
            self.batches.setdefault(model, {})[float(labels["le"])] = value
        elif name == "hostd_batch_rows_sum":
            self.batch_rows[model] = value
        elif name == "hostd_pending":
            self.pending[model] = value
        elif name == "hostd_cache_lookups_total":
            self.cache.setdefault((model, labels["version"]), {})[labels["result"]] = value

    def _traffic(self, model: str, transport: str) -> Traffic:
        return self.traffic.setdefault(model, {}).setdefault(transport, Traffic())

    def of_model(self, model: str) -> Traffic:
        """The model's requests on every transport together."""
        return merged(self.traffic.get(model, {}).values())


class Stats:
    """``report()``: every model and version with its state (and how many of them are READY), and per
    transport the requests since start and, over the last ``window_s``, requests/s, p50 and p99 latency
    and the share of each error code; rows per model call, queue depth, cache hit rate; requests/s and
    p99 of each second of the last ``history_s`` for the charts."""

    def __init__(self, registry: CollectorRegistry, *, window_s: float = 10.0, every_s: float = 1.0,
                 history_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.window_s, self.every_s, self.history_s = window_s, every_s, history_s
        self.clock = clock
        # Snapshots as far back as the window (and one more, a baseline when none is inside it): only
        # the rates need them.
        self.ring: deque[Snapshot] = deque(maxlen=math.ceil(window_s / every_s) + 2)
        # The charts': each second's requests/s and p99 by model, computed once when its snapshot was
        # taken, a few numbers where a snapshot holds every bucket of every series.
        self.points: deque[tuple[float, dict[str, tuple[float, float | None]]]] = deque(
            maxlen=math.ceil(history_s / every_s) + 1)
        self._take()  # the baseline the first report's rates start from

    def report(self, index: list[dict[str, str]], sees: Callable[[str], bool] = lambda model: True) -> Json:
        """The figures of every model in ``index`` (the repository's, with states) that ``sees`` lets
        through, and of any other model the counters name (requests for an unknown model, say);
        ``models_loaded`` counts their READY versions."""
        now = self._take()
        then = self._baseline(now.at)
        span = now.at - then.at
        versions: dict[str, list[dict[str, str]]] = {}
        for entry in index:
            versions.setdefault(entry["name"], []).append(entry)
        names = [name for name in [*versions, *sorted(set(now.traffic) - set(versions))] if sees(name)]
        return {
            "window_s": round(span, 3),
            # The versions listed that serve (not hostd_models_loaded, which counts every model's, also
            # those a key with an allow-list is not shown).
            "models_loaded": sum(entry["state"] == "READY" for name in names for entry in versions.get(name, [])),
            "models": [self._model(name, versions.get(name, []), now, then, span) for name in names],
        }

    def _take(self) -> Snapshot:
        now = Snapshot.of(self.registry, self.clock())
        if not self.ring or now.at - self.ring[-1].at >= self.every_s:
            if self.ring:
                self.points.append((now.at, second_by_second(self.ring[-1], now)))
            self.ring.append(now)
        return now

    def _baseline(self, now: float) -> Snapshot:
        """What the rates start from: the oldest snapshot of the last ``window_s`` that is at least
        ``every_s`` old (a shorter span is no rate), as Prometheus' ``rate(x[window])`` starts from the
        first sample inside its range. So after minutes when nobody asked, the snapshot left from
        before them is not used once a newer one is old enough: the window grows from ``every_s`` to
        ``window_s`` again. If none is (the first report after such a spell), the newest older than the
        window, a longer span than asked that ``window_s`` shows (Prometheus would have no rate);
        failing that, the oldest there is."""
        aged = [snapshot for snapshot in self.ring if snapshot.at <= now - self.every_s]
        inside = [snapshot for snapshot in aged if snapshot.at >= now - self.window_s]
        return inside[0] if inside else aged[-1] if aged else self.ring[0]

    def _model(self, name: str, entries: list[dict[str, str]], now: Snapshot, then: Snapshot, span: float) -> Json:
        earlier = then.traffic.get(name, {})
        return {
            "name": name,
            "versions": [{"version": entry["version"], "state": entry["state"], "reason": entry["reason"],
                          "cache": _cache(now.cache.get((name, entry["version"])),
                                          then.cache.get((name, entry["version"])))} for entry in entries],
            "pending": _count(now.pending.get(name, 0.0)),
            "all": _figures(now.of_model(name), then.of_model(name), span),
            "transports": {transport: _figures(traffic, earlier.get(transport, Traffic()), span)
                           for transport, traffic in sorted(now.traffic.get(name, {}).items())},
            "batches": _batches(name, now, then, span),
            "history": self._history(name, now.at),
        }

    def _history(self, name: str, now: float) -> Json:
        points = [(at - now, figures[name]) for at, figures in self.points
                  if name in figures and at > now - self.history_s]
        return {"t": [round(t, 3) for t, _ in points], "per_s": [_round(point[0]) for _, point in points],
                "p99_ms": [_round(point[1]) for _, point in points]}


def second_by_second(before: Snapshot, after: Snapshot) -> dict[str, tuple[float, float | None]]:
    """Each model's requests/s and p99 (ms) between two snapshots: one point of a chart."""
    span = after.at - before.at
    points = {}
    for model in after.traffic:
        window = _window(after.of_model(model), before.of_model(model))
        p99 = quantile(0.99, window.buckets)
        points[model] = (_per_s(window.requests(), span) or 0.0, None if p99 is None else p99 * 1000)
    return points


def _figures(now: Traffic, then: Traffic, span: float) -> Json:
    window = _window(now, then)
    answered = window.requests()
    p50, p99 = quantile(0.5, window.buckets), quantile(0.99, window.buckets)
    errors = {code: count / answered for code, count in sorted(window.codes.items()) if code != "OK" and count}
    return {
        "requests": _count(now.requests()),
        "codes": {code: _count(count) for code, count in sorted(now.codes.items())},
        "per_s": _round(_per_s(answered, span)),
        "p50_ms": _round(None if p50 is None else p50 * 1000),
        "p99_ms": _round(None if p99 is None else p99 * 1000),
        "error_rate": _round(sum(errors.values(), 0.0) if answered else None),
        "errors": {code: _round(share) for code, share in errors.items()},
    }


def _batches(name: str, now: Snapshot, then: Snapshot, span: float) -> Json:
    """Model calls (hostd_batch_rows): since start, and per second, mean rows and sizes in the window."""
    total = now.batches.get(name, {})
    window = _delta(total, then.batches.get(name, {}))
    calls = max(window.values(), default=0.0)  # the +Inf bucket's count
    rows = now.batch_rows.get(name, 0.0) - then.batch_rows.get(name, 0.0)
    return {"calls": _count(max(total.values(), default=0.0)), "rows": _count(now.batch_rows.get(name, 0.0)),
            "per_s": _round(_per_s(calls, span)), "mean_rows": _round(rows / calls if calls else None),
            "sizes": _sizes(window)}


def _cache(now: dict[str, float] | None, then: dict[str, float] | None) -> Json | None:
    if now is None:
        return None  # this version has no cache, or has not been asked yet
    window = _delta(now, then or {})
    looked = window.get("hit", 0.0) + window.get("miss", 0.0)
    return {"hits": _count(now.get("hit", 0.0)), "misses": _count(now.get("miss", 0.0)),
            "hit_rate": _round(window.get("hit", 0.0) / looked if looked else None)}


def _sizes(calls: Buckets) -> dict[str, int | float]:
    """Model calls per bucket of rows (not cumulative): {"1": calls of 1 row, "2": of 2, "4": of 3-4...}."""
    sizes, below = {}, 0.0
    for bound in sorted(calls):
        if calls[bound] > below:
            sizes["+Inf" if math.isinf(bound) else f"{bound:g}"] = _count(calls[bound] - below)
        below = calls[bound]
    return sizes


def quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile of what cumulative ``buckets`` counted, as Prometheus' histogram_quantile
    computes it: linear within the bucket the rank falls in (the first from 0: hostd's buckets are of
    durations and sizes); in the +Inf bucket, the highest finite bound. None if nothing was counted."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank and count > below:
            return lower if math.isinf(bound) else lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def merged(traffic: Iterable[Traffic]) -> Traffic:
    total = Traffic()
    for part in traffic:
        for code, count in part.codes.items():
            total.codes[code] = total.codes.get(code, 0.0) + count
        for bound, count in part.buckets.items():
            total.buckets[bound] = total.buckets.get(bound, 0.0) + count
    return total


def _window(now: Traffic, then: Traffic) -> Traffic:
    return Traffic(_delta(now.codes, then.codes), _delta(now.buckets, then.buckets))


def _delta(now: dict[K, float], then: dict[K, float]) -> dict[K, float]:
    # A counter below its earlier value was reset (a series removed and made again): count from zero.
    return {key: value - then.get(key, 0.0) if value >= then.get(key, 0.0) else value for key, value in now.items()}


def _per_s(count: float, span: float) -> float | None:
    return count / span if span > 0 else None


def _count(value: float) -> int | float:
    """A counter's value as the whole number it is (prometheus_client keeps floats)."""
    return int(value) if float(value).is_integer() else value


def _round(value: float | None) -> float | None:
    # Four significant digits: finer is noise, for a rate, a quantile read from buckets, or a share.
    return None if value is None else float(f"{value:.4g}")
