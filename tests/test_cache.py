"""hostd.cache: canonical row keys, the memory backend's bounds, and the data plane's per-row caching."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from hostd import cache as cache_module
from hostd.cache import ENTRY_OVERHEAD, MemoryCache, row_keys
from hostd.configfile import parse_settings
from hostd.dataplane import DataPlane
from hostd.errors import ConfigError, InvalidInput
from hostd.observability import Metrics
from hostd.registry import Registry
from hostd.settings import CacheSettings, HostSettings
from tests.support.toy import EchoInput

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def cached_echo(**cache: Any) -> DataPlane:
    settings = {"class_path": "tests.support.toy:EchoModel", "cache": cache or {"max_entries": 100}}
    plane = DataPlane(Registry.from_settings(HostSettings.model_validate({"models": [settings]})))
    plane.set_ready()
    return plane


def model_rows(plane: DataPlane) -> int:
    """Rows the echo model has been called with."""
    return sum(plane.model("echo").model.batches)


def lookups(plane: DataPlane, result: str) -> float:
    value = plane.metrics.registry.get_sample_value("hostd_cache_lookups_total",
                                                    {"model": "echo", "version": "1.0.0", "result": result})
    return value or 0.0


# --- keys -------------------------------------------------------------------------------------------


def test_equal_inputs_have_one_key_whatever_their_field_order_and_number_spelling() -> None:
    rows = [EchoInput.model_validate(raw) for raw in ({"x": 1, "text": "a"}, {"text": "a", "x": 1.0},
                                                      {"x": 1.0, "text": "a", "delay_ms": 0})]
    keys = row_keys("echo", "1.0.0", EchoInput, rows)
    assert keys[0] == keys[1] == keys[2]


def test_keys_differ_by_input_model_and_version() -> None:
    row, other = EchoInput(x=1), EchoInput(x=2)
    assert len({*row_keys("echo", "1.0.0", EchoInput, [row, other]), *row_keys("echo", "2.0.0", EchoInput, [row]),
                *row_keys("other", "1.0.0", EchoInput, [row])}) == 4


# --- the memory backend -----------------------------------------------------------------------------


async def test_memory_cache_keeps_the_most_recently_used_within_max_entries() -> None:
    metrics = Metrics()
    memory = MemoryCache(CacheSettings(max_entries=2), metrics, "echo", "1.0.0")
    memory.put_many([(b"a", b"1"), (b"b", b"2")])
    assert await memory.get_many([b"a"]) == [b"1"]  # a is now the most recently used
    memory.put_many([(b"c", b"3")])
    assert await memory.get_many([b"a", b"b", b"c"]) == [b"1", None, b"3"]
    assert metrics.registry.get_sample_value("hostd_cache_evictions_total",
                                             {"model": "echo", "version": "1.0.0"}) == 1


async def test_memory_cache_stays_within_max_bytes_under_many_distinct_inputs() -> None:
    memory = MemoryCache(CacheSettings(max_bytes=64 * 1024), Metrics(), "echo", "1.0.0")
    for start in range(0, 100_000, 1000):
        memory.put_many([(f"{index:020}".encode(), b"x" * 30) for index in range(start, start + 1000)])
        assert memory.size <= 64 * 1024
    assert len(memory) == 64 * 1024 // (20 + 30 + ENTRY_OVERHEAD)


async def test_memory_cache_entries_expire_after_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(cache_module.time, "monotonic", lambda: now[0])
    memory = MemoryCache(CacheSettings(max_entries=10, ttl_s=5), Metrics(), "echo", "1.0.0")
    memory.put_many([(b"a", b"1")])
    now[0] += 4.9
    assert await memory.get_many([b"a"]) == [b"1"]
    now[0] += 0.2
    assert await memory.get_many([b"a"]) == [None]
    assert len(memory) == 0


# --- through the data plane -------------------------------------------------------------------------


async def test_a_request_of_ten_rows_with_seven_known_sends_three_to_the_model() -> None:
    plane = cached_echo()
    await plane.predict_many("echo", [{"x": x} for x in range(7)])
    assert model_rows(plane) == 7
    result = await plane.predict_many("echo", [{"x": x} for x in range(10)])
    assert model_rows(plane) == 10  # 3 more
    assert [output["y"] for output in result.outputs] == [2.0 * x for x in range(10)]
    assert result.cached is False  # not every row came from the cache
    assert (lookups(plane, "hit"), lookups(plane, "miss")) == (7, 10)


async def test_an_input_seen_before_is_answered_by_the_cache_alone() -> None:
    plane = cached_echo()
    first = await plane.predict("echo", {"x": 3, "text": "a"})
    again = await plane.predict("echo", {"text": "a", "x": 3.0})
    assert (first.cached, again.cached) == (False, True)
    assert again.outputs == first.outputs
    assert model_rows(plane) == 1


async def test_streams_rows_are_cached_one_by_one() -> None:
    plane = cached_echo()
    await plane.predict("echo", {"x": 1})
    results = await plane.predict_each("echo", [{"x": 1}, {"x": 2}, {"x": "bad"}])
    assert [getattr(result, "cached", None) for result in results] == [True, False, None]
    assert isinstance(results[2], InvalidInput)
    assert model_rows(plane) == 2


async def test_a_client_can_skip_the_cache_and_its_fresh_answer_is_stored() -> None:
    plane = cached_echo()
    await plane.predict("echo", {"x": 1})
    fresh = await plane.predict("echo", {"x": 1}, use_cache=False)
    assert fresh.cached is False
    assert model_rows(plane) == 2
    assert (await plane.predict("echo", {"x": 2}, use_cache=False)).cached is False
    assert (await plane.predict("echo", {"x": 2})).cached is True  # stored by the request that skipped it
    assert model_rows(plane) == 3


async def test_a_failed_row_is_not_cached() -> None:
    plane = cached_echo()
    for _ in range(2):
        with pytest.raises(Exception, match="asked to fail"):
            await plane.predict("echo", {"x": 1, "fail": True})
    assert len(plane.model("echo").cache.backend) == 0  # type: ignore[union-attr, arg-type]


async def test_a_model_without_a_cache_says_nothing_about_it() -> None:
    plane = DataPlane(Registry.from_settings(HostSettings.model_validate(
        {"models": [{"class_path": "tests.support.toy:EchoModel"}]})))
    plane.set_ready()
    assert (await plane.predict("echo", {"x": 1})).cached is None


# --- configuration ----------------------------------------------------------------------------------


def test_caching_a_model_that_is_not_deterministic_is_a_config_error_naming_the_entry() -> None:
    settings = parse_settings("models:\n  - class_path: diabetes_model.model:DiabetesModel\n"
                              "    cache: {max_entries: 10}\n", "host.yaml")
    with pytest.raises(ConfigError, match=r"host.yaml:3: model 'diabetes_model' is not deterministic"):
        Registry.from_settings(settings)


def test_the_redis_backend_shares_the_arq_transports_redis() -> None:
    settings = parse_settings("models:\n  - class_path: tests.support.toy:EchoModel\n    cache: {backend: redis}\n"
                              "transports: {arq: {redis_url: 'redis://127.0.0.1:6400/2'}}\n", "host.yaml")
    (entry,) = settings.model_entries()
    assert entry.settings.cache is not None and entry.settings.cache.redis_url == "redis://127.0.0.1:6400/2"


def test_the_redis_backend_without_a_redis_is_a_config_error() -> None:
    settings = parse_settings("models:\n  - class_path: tests.support.toy:EchoModel\n    cache: {backend: redis}\n",
                              "host.yaml")
    with pytest.raises(ConfigError, match=r"host.yaml:3: cache: the redis backend needs a redis_url"):
        settings.model_entries()


def test_the_memory_backend_is_bounded_by_default() -> None:
    assert (CacheSettings().max_entries, CacheSettings().max_bytes) == (10_000, 256 << 20)
    assert CacheSettings(max_entries=5).max_bytes == 256 << 20  # big outputs cannot outgrow memory


async def test_memory_stays_within_max_bytes_under_a_million_distinct_inputs() -> None:
    bound = 4 << 20
    plane = cached_echo(max_bytes=bound)
    plane.model("echo").settings.batching.max_batch_size = 1  # one call per request: no batcher in the way
    for start in range(0, 1_000_000, 20_000):
        rows = [{"x": index % 2000 - 1000, "text": str(index)} for index in range(start, start + 20_000)]
        assert len((await plane.predict_many("echo", rows)).outputs) == 20_000
        memory = plane.model("echo").cache.backend  # type: ignore[union-attr]
        assert memory.size <= bound  # type: ignore[union-attr]
    # The bound counts what the entries really take: the keys, values, tuples and the dict's slots.
    held = sum(sys.getsizeof(key) + sys.getsizeof(entry) + sys.getsizeof(entry[0]) + sys.getsizeof(entry[1])
               for key, entry in memory._entries.items()) + sys.getsizeof(memory._entries)  # type: ignore[union-attr]
    assert held <= 1.25 * bound, held
    assert lookups(plane, "miss") == 1_000_000
    assert len(memory) > 10_000  # type: ignore[arg-type]  # full (~10,280 entries of ~408 bytes), not emptied


async def test_a_stored_answer_that_is_not_json_is_a_miss() -> None:
    plane = cached_echo()
    await plane.predict("echo", {"x": 1})
    memory = plane.model("echo").cache.backend  # type: ignore[union-attr]
    for key, (expires, _) in list(memory._entries.items()):  # type: ignore[union-attr]
        memory._entries[key] = (expires, b"\xff not json")  # type: ignore[union-attr]
    again = await plane.predict("echo", {"x": 1})  # as if something else wrote to a shared Redis
    assert (again.cached, again.output["y"]) == (False, 2.0)


def test_rows_json_cannot_tell_apart_are_never_cached() -> None:
    rows = [EchoInput.model_construct(x=value) for value in (float("inf"), float("-inf"), float("nan"))]
    keys = row_keys("echo", "1.0.0", EchoInput, [*rows, EchoInput(x=1)])  # JSON writes the first 3 as null
    assert keys[:3] == [None, None, None] and keys[3] is not None


async def test_a_retired_version_finds_and_keeps_nothing() -> None:
    plane = cached_echo()
    await plane.predict("echo", {"x": 1})
    cache = plane.model("echo").cache
    assert cache is not None
    await cache.drop()
    assert (await cache.lookup([[EchoInput(x=1)]])).hits() == 0
    cache.store([(b"k" * 20, b"{}")])
    assert len(cache.backend) == 0  # type: ignore[arg-type]


def test_a_model_whose_input_hides_fields_cannot_be_cached() -> None:
    settings = parse_settings("models:\n  - class_path: tests.support.toy:SecretEcho\n    cache: {}\n", "host.yaml")
    with pytest.raises(ConfigError, match=r"cannot be cached: its input's token would not be part of the key"):
        Registry.from_settings(settings)
