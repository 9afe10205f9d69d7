"""The prediction cache's Redis backend: one cache shared by every replica of hostd.

Redis is an optimisation here, never a dependency: a call that fails or takes longer than
``timeout_ms`` counts as an outage, and for ``RETRY_S`` after one the cache answers "not found" and
stores nothing, without trying Redis (so a dead Redis costs a request nothing, not a timeout each).
Stores go out in the background, off the request's path; at most ``MAX_STORES`` at once, more are
left out (a cache may always forget).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from hostd.ratelimitedlog import RateLimitedLog

if TYPE_CHECKING:
    from hostd.observability import Metrics
    from hostd.settings import CacheSettings

log = structlog.get_logger("hostd.cache")
RETRY_S = 1.0  # after a failure, Redis is left alone this long
MAX_STORES = 64  # background SETs in flight
SCAN_COUNT = 1000
DROP_TIMEOUT_S = 5.0


class RedisCache:
    def __init__(self, settings: CacheSettings, metrics: Metrics, name: str, version: str,
                 fingerprint: str = "") -> None:
        import redis.asyncio

        assert settings.redis_url is not None  # settings.model_entries() fills it in
        self._url: str = settings.redis_url
        timeout = settings.timeout_ms / 1000
        self._redis = redis.asyncio.Redis.from_url(settings.redis_url, socket_timeout=timeout,
                                                   socket_connect_timeout=timeout)
        self._timeout = timeout
        self._ttl_ms = int(settings.ttl_s * 1000) if settings.ttl_s is not None else None
        # The fingerprint of what the version was built from: a reload that changes the model's class or
        # configuration (a new artifact) starts a fresh namespace, so no replica reads the old answers.
        self._prefix = f"{settings.key_prefix}{name}:{version}:{fingerprint}:".encode()
        self._down_until = 0.0
        self._stores: set[asyncio.Task[None]] = set()
        self._errors = metrics.cache_errors.labels(name, version)
        self._failures = RateLimitedLog(log)
        self._model = (name, version)

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if time.monotonic() < self._down_until:
            return [None] * len(keys)
        try:
            async with asyncio.timeout(self._timeout):
                return await self._redis.mget([self._prefix + key.hex().encode() for key in keys])  # type: ignore[no-any-return]
        except Exception as exc:  # any failure: answer without the cache
            self._failed(exc)
            return [None] * len(keys)

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        if time.monotonic() < self._down_until or len(self._stores) >= MAX_STORES:
            return
        task = asyncio.get_running_loop().create_task(self._put(items))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    async def _put(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        try:
            async with asyncio.timeout(self._timeout), self._redis.pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(self._prefix + key.hex().encode(), value, px=self._ttl_ms)
                await pipe.execute()
        except Exception as exc:
            self._failed(exc)

    async def drop(self) -> None:
        """Delete this version's entries (every replica's: they share them), then close the connections."""
        import redis.asyncio

        for task in list(self._stores):
            task.cancel()
        await self._redis.aclose()
        # Its own connection, with a longer timeout than a request's: a SCAN step of a big Redis may take it.
        self._redis = redis.asyncio.Redis.from_url(self._url, socket_timeout=DROP_TIMEOUT_S,
                                                   socket_connect_timeout=DROP_TIMEOUT_S)
        try:
            pattern = re.sub(rb"([*?\[\]\\])", rb"\\\1", self._prefix) + b"*"
            batch: list[bytes] = []
            async for key in self._redis.scan_iter(match=pattern, count=SCAN_COUNT):
                batch.append(key)
                if len(batch) >= SCAN_COUNT:
                    await self._redis.unlink(*batch)
                    batch.clear()
            if batch:
                await self._redis.unlink(*batch)
        except Exception as exc:  # entries left behind expire with their ttl
            log.warning("could not drop the cache's entries in Redis", model=self._model[0], version=self._model[1],
                        error=f"{type(exc).__name__}: {exc}")
        finally:
            await self._redis.aclose()

    def _failed(self, exc: Exception) -> None:
        self._down_until = time.monotonic() + RETRY_S
        self._errors.inc()
        self._failures.warning("redis", "prediction cache: Redis failed; answering without the cache",
                               model=self._model[0], version=self._model[1], retry_s=RETRY_S,
                               error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
