"""The prediction cache: each row's answer, kept by the row's canonical form, for deterministic models.

A row's key is the model's name and version and the row as its schema validated it, dumped with sorted
keys: equal inputs give one key whatever transport, field order or number spelling (1 or 1.0 for a
float field) they came with. The data plane looks every row of a call up at once, sends only the rows
not found to the model (through the batcher), and stores their answers; a request of 10 rows with 7
known costs the model 3. Answers are kept as the JSON the client got, so a hit is decoded, not
re-validated.

Two backends: ``MemoryCache`` (an LRU in the daemon, bounded by entries or bytes) and ``RedisCache``
(hostd.rediscache: shared by every replica, and a Redis outage only turns caching off).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from pydantic import BaseModel

from hostd.kernel import rows_adapter

if TYPE_CHECKING:
    from hostd.observability import Metrics
    from hostd.settings import CacheSettings

#: What an entry costs besides its key's and value's bytes, measured with sys.getsizeof on CPython 3.11
#: after a million distinct inputs went through: two bytes objects' headers (33 each), the (expires,
#: value) tuple (56) and its float (24), and ~214 for its share of the OrderedDict's tables (which
#: churn leaves up to twice as big as the entries need; ~75 when freshly filled).
ENTRY_OVERHEAD = 360


class Cache(Protocol):
    """A backend: answers by key (None where there is none), and storing answers."""

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...
    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None: ...
    async def drop(self) -> None: ...


def row_keys(name: str, version: str, schema: type[BaseModel], rows: Sequence[Any]) -> list[bytes]:
    """Each validated row's key: a 20-byte digest of the model, its version and the row's canonical JSON."""
    prefix = f"{name}\0{version}\0".encode()
    dumped = rows_adapter(schema).dump_python(list(rows), mode="json")  # one pydantic-core call for the rows
    return [hashlib.blake2b(prefix + orjson.dumps(row, option=orjson.OPT_SORT_KEYS), digest_size=20).digest()
            for row in dumped]


@dataclass(slots=True)
class Lookup:
    """What the cache had for the rows of some units (a unit: the rows of one request)."""

    keys: list[list[bytes]]
    found: list[list[dict[str, Any] | None]]

    def missing(self, units: Sequence[list[Any]]) -> tuple[list[list[Any]], list[int]]:
        """The units' rows the cache did not have, as units, and the index of the unit each came from."""
        todo, origin = [], []
        for index, (unit, found) in enumerate(zip(units, self.found, strict=True)):
            rows = [row for row, answer in zip(unit, found, strict=True) if answer is None]
            if rows:
                todo.append(rows)
                origin.append(index)
        return todo, origin

    def complete(self, origin: list[int], answers: Sequence[list[dict[str, Any]] | Exception],
                 ) -> tuple[list[list[dict[str, Any]] | Exception], list[tuple[bytes, bytes]]]:
        """Every unit's answer, the cache's rows and the model's ``answers`` (for the units ``origin``
        names) merged in row order; and the new entries to store (from units that succeeded)."""
        merged: list[list[dict[str, Any]] | Exception] = [found for found in self.found]  # type: ignore[misc]
        new: list[tuple[bytes, bytes]] = []
        for index, answer in zip(origin, answers, strict=True):
            if isinstance(answer, Exception):
                merged[index] = answer
                continue
            computed = iter(answer)
            rows = []
            for key, known in zip(self.keys[index], self.found[index], strict=True):
                if known is None:
                    known = next(computed)
                    new.append((key, orjson.dumps(known)))
                rows.append(known)
            merged[index] = rows
        return merged, new

    def hits(self) -> int:
        return sum(answer is not None for found in self.found for answer in found)


class PredictionCache:
    """One model version's cache: keys rows, looks them up, stores answers, counts all of it."""

    def __init__(self, name: str, version: str, schema: type[BaseModel], backend: Cache, metrics: Metrics) -> None:
        self.name, self.version, self.schema, self.backend = name, version, schema, backend
        self._hits, self._misses = metrics.cache_lookups.labels(name, version, "hit"), \
            metrics.cache_lookups.labels(name, version, "miss")

    async def lookup(self, units: Sequence[list[Any]], *, look: bool = True) -> Lookup:
        """What the cache has for the units' rows; ``look=False`` (the client asked for fresh answers):
        nothing, without asking the backend, but the keys to store the fresh answers under."""
        keys_flat = row_keys(self.name, self.version, self.schema, [row for unit in units for row in unit])
        if not look:
            return Lookup([keys_flat[i:i + len(u)] for i, u in zip(_offsets(units), units, strict=True)],
                          [[None] * len(unit) for unit in units])
        stored = await self.backend.get_many(keys_flat)
        keys, found = [], []
        for offset, unit in zip(_offsets(units), units, strict=True):
            keys.append(keys_flat[offset:offset + len(unit)])
            found.append([_decoded(value) for value in stored[offset:offset + len(unit)]])
        lookup = Lookup(keys, found)
        hits = lookup.hits()
        self._hits.inc(hits)
        self._misses.inc(len(keys_flat) - hits)
        return lookup

    def store(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        if items:
            self.backend.put_many(items)

    async def drop(self) -> None:
        """Forget every entry of this version (it was unloaded or reloaded)."""
        await self.backend.drop()


def _decoded(value: bytes | None) -> dict[str, Any] | None:
    """A stored answer; None (a miss) for one that is not a JSON object (Redis is shared: anything may
    have written there)."""
    if value is None:
        return None
    try:
        answer = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def _offsets(units: Sequence[list[Any]]) -> list[int]:
    """Where each unit's rows start in the units' rows laid end to end."""
    starts, offset = [], 0
    for unit in units:
        starts.append(offset)
        offset += len(unit)
    return starts


class MemoryCache:
    """An LRU of answers in the daemon, within ``max_entries`` and ``max_bytes`` (keys and values plus
    ENTRY_OVERHEAD each), each entry kept at most ``ttl_s``."""

    def __init__(self, settings: CacheSettings, metrics: Metrics, name: str, version: str) -> None:
        self.max_entries = settings.max_entries
        self.max_bytes = settings.max_bytes
        self.ttl_s = settings.ttl_s
        self.size = 0  # bytes, as counted against max_bytes
        self._entries: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()  # key -> (expires, value)
        self._evictions = metrics.cache_evictions.labels(name, version)
        self._entries_gauge = metrics.cache_entries.labels(name, version)
        self._bytes_gauge = metrics.cache_bytes.labels(name, version)

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        now, found = time.monotonic(), []
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None and entry[0] < now:
                self._remove(key)
                entry = None
            if entry is not None:
                self._entries.move_to_end(key)
            found.append(entry[1] if entry is not None else None)
        return found

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        expires = time.monotonic() + self.ttl_s if self.ttl_s is not None else float("inf")
        for key, value in items:
            if key in self._entries:
                self._remove(key)
            self._entries[key] = (expires, value)
            self.size += len(key) + len(value) + ENTRY_OVERHEAD
            # Evict as each goes in: a request of 20,000 new rows never holds them all at once (the dict's
            # table, which does not shrink, would be sized for them).
            while self._over():
                self._remove(next(iter(self._entries)))
                self._evictions.inc()
        self._entries_gauge.set(len(self._entries))
        self._bytes_gauge.set(self.size)

    def __len__(self) -> int:
        return len(self._entries)

    async def drop(self) -> None:
        self._entries.clear()
        self.size = 0
        self._entries_gauge.set(0)
        self._bytes_gauge.set(0)

    def _over(self) -> bool:
        return ((self.max_entries is not None and len(self._entries) > self.max_entries)
                or (self.max_bytes is not None and self.size > self.max_bytes))

    def _remove(self, key: bytes) -> None:
        _, value = self._entries.pop(key)
        self.size -= len(key) + len(value) + ENTRY_OVERHEAD


def make_cache(settings: CacheSettings, name: str, version: str, schema: type[BaseModel],
               metrics: Metrics) -> PredictionCache:
    """The cache ``settings`` describe for one model version."""
    backend: Cache
    if settings.backend == "redis":
        from hostd.rediscache import RedisCache

        backend = RedisCache(settings, metrics, name, version)
    else:
        backend = MemoryCache(settings, metrics, name, version)
    return PredictionCache(name, version, schema, backend, metrics)
