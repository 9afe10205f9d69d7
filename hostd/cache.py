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
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson
from pydantic import BaseModel, SecretBytes, SecretStr

from hostd.kernel import rows_adapter
from hostd.tasks import off_loop_if

if TYPE_CHECKING:
    from hostd.observability import Metrics
    from hostd.settings import CacheSettings

T = TypeVar("T")
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


def row_keys(name: str, version: str, schema: type[BaseModel], rows: Sequence[Any]) -> list[bytes | None]:
    """Each validated row's key: a 20-byte digest of the model, its version and the row's canonical JSON;
    None for a row whose JSON would not tell it from another (a NaN or an infinity, which JSON writes
    as null): never cached."""
    prefix = f"{name}\0{version}\0".encode()
    dumped = rows_adapter(schema).dump_python(list(rows), mode="json")  # one pydantic-core call for the rows
    return [hashlib.blake2b(prefix + orjson.dumps(data, option=orjson.OPT_SORT_KEYS), digest_size=20).digest()
            if _finite(row) else None for row, data in zip(rows, dumped, strict=True)]


def _finite(value: Any) -> bool:
    """No float in ``value`` (a validated row, or what it holds) is a NaN or an infinity."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, BaseModel):
        return all(_finite(item) for item in value.__dict__.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(item) for item in value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    return True


def uncacheable_fields(schema: type[BaseModel]) -> list[str]:
    """The input fields that a row's dumped form leaves out or hides (``exclude=True``, a secret): rows
    that differ only there would share a key."""
    return [name for name, info in schema.model_fields.items()
            if info.exclude or info.annotation in (SecretStr, SecretBytes)]


Answer = dict[str, Any]


@dataclass(slots=True)
class Lookup:
    """What the cache had for the rows of some units (a unit: the rows of one request)."""

    keys: list[list[bytes | None]]
    found: list[list[Answer | None]]

    def missing(self, units: Sequence[list[Any]]) -> tuple[list[list[Any]], list[int]]:
        """The units' rows the cache did not have, as units, and the index of the unit each came from."""
        todo, origin = [], []
        for index, (unit, found) in enumerate(zip(units, self.found, strict=True)):
            rows = [row for row, answer in zip(unit, found, strict=True) if answer is None]
            if rows:
                todo.append(rows)
                origin.append(index)
        return todo, origin

    def complete(self, origin: list[int], answers: Sequence[list[Answer] | Exception],
                 ) -> tuple[list[list[Answer] | Exception], list[tuple[bytes, bytes]]]:
        """Every unit's answer, the cache's rows and the model's ``answers`` (for the units ``origin``
        names) merged in row order; and the new entries to store (from units that succeeded)."""
        merged: list[list[Answer] | Exception] = [found for found in self.found]  # type: ignore[misc]
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
                    if key is not None:
                        new.append((key, orjson.dumps(known)))
                rows.append(known)
            merged[index] = rows
        return merged, new

    def hits(self) -> int:
        return sum(answer is not None for found in self.found for answer in found)


class PredictionCache:
    """One model version's cache: keys rows, looks them up, stores answers, counts all of it. Once the
    version is retired (``drop``) it finds and keeps nothing, so a request still finishing on the old
    model cannot store an answer where its replacement would find it."""

    def __init__(self, name: str, version: str, schema: type[BaseModel], backend: Cache, metrics: Metrics) -> None:
        self.name, self.version, self.schema, self.backend = name, version, schema, backend
        self.closed = False
        self._hits, self._misses = metrics.cache_lookups.labels(name, version, "hit"), \
            metrics.cache_lookups.labels(name, version, "miss")

    async def lookup(self, units: Sequence[list[Any]], *, look: bool = True, off_loop: bool = False) -> Lookup:
        """What the cache has for the units' rows; ``look=False`` (the client asked for fresh answers):
        nothing, without asking the backend, but the keys to store the fresh answers under. ``off_loop``:
        key and decode in a thread (a big request)."""
        rows = [row for unit in units for row in unit]
        keys_flat = await off_loop_if(off_loop, row_keys, self.name, self.version, self.schema, rows)
        if not look or self.closed:
            return Lookup(_split(keys_flat, units), [[None] * len(unit) for unit in units])
        wanted = [key for key in keys_flat if key is not None]
        stored = iter(await self.backend.get_many(wanted) if wanted else [])
        values = [next(stored) if key is not None else None for key in keys_flat]
        found = await off_loop_if(off_loop, lambda: [_decoded(value) for value in values])
        lookup = Lookup(_split(keys_flat, units), _split(found, units))
        hits = lookup.hits()
        self._hits.inc(hits)
        self._misses.inc(len(keys_flat) - hits)
        return lookup

    def store(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        if items and not self.closed:
            self.backend.put_many(items)

    async def drop(self) -> None:
        """Forget every entry of this version (it was unloaded or reloaded), and keep no more."""
        self.closed = True
        await self.backend.drop()


def _decoded(value: bytes | None) -> Answer | None:
    """A stored answer; None (a miss) for one that is not a JSON object (Redis is shared: anything may
    have written there)."""
    if value is None:
        return None
    try:
        answer = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def _split(flat: list[T], units: Sequence[list[Any]]) -> list[list[T]]:
    """``flat`` (one item per row of ``units``, laid end to end) cut back into units."""
    out, offset = [], 0
    for unit in units:
        out.append(flat[offset:offset + len(unit)])
        offset += len(unit)
    return out


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


def make_cache(settings: CacheSettings, name: str, version: str, schema: type[BaseModel], metrics: Metrics,
               fingerprint: str = "") -> PredictionCache:
    """The cache ``settings`` describe for one model version. ``fingerprint`` names what the version was
    built from (its class and configuration): in a shared Redis, a reload that changes it starts afresh."""
    backend: Cache
    if settings.backend == "redis":
        from hostd.rediscache import RedisCache

        backend = RedisCache(settings, metrics, name, version, fingerprint)
    else:
        backend = MemoryCache(settings, metrics, name, version)
    return PredictionCache(name, version, schema, backend, metrics)
