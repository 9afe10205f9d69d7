"""hostd.stats: the dashboard's figures from a real Metrics registry, on a clock the test moves."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from hostd.observability import Metrics
from hostd.stats import SCHEMA, Stats, quantile

INDEX = [{"name": "iris", "version": "1.0.0", "state": "READY", "reason": ""},
         {"name": "iris", "version": "2.0.0", "state": "LOADING", "reason": ""},
         {"name": "digits", "version": "1.0.0", "state": "UNAVAILABLE", "reason": "not loaded"}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def model(report: dict[str, Any], name: str) -> dict[str, Any]:
    jsonschema.validate(report, SCHEMA)
    [found] = [entry for entry in report["models"] if entry["name"] == name]
    return found


def answer(metrics: Metrics, times: int, seconds: float, code: str = "OK", transport: str = "http",
           name: str = "iris") -> None:
    for _ in range(times):
        metrics.answered(name, transport, code, seconds)


def test_rates_are_requests_over_the_time_between_snapshots(metrics: Metrics, clock: Clock) -> None:
    stats = Stats(metrics.registry, clock=clock)
    answer(metrics, 30, 0.003)
    answer(metrics, 12, 0.003, transport="ws")
    clock.now += 4
    iris = model(stats.report(INDEX), "iris")
    assert iris["transports"]["http"]["per_s"] == 7.5 and iris["transports"]["ws"]["per_s"] == 3.0
    assert iris["all"]["per_s"] == 10.5 and iris["all"]["requests"] == 42


def test_rates_and_quantiles_cover_the_window_and_totals_everything(metrics: Metrics, clock: Clock) -> None:
    stats = Stats(metrics.registry, window_s=10, clock=clock)
    answer(metrics, 10, 2.0)  # slow, and then out of the window
    clock.now += 1
    stats.report(INDEX)  # kept: the baseline once 10 s have passed
    clock.now += 11
    answer(metrics, 22, 0.003)
    report = stats.report(INDEX)
    http = model(report, "iris")["transports"]["http"]
    assert report["window_s"] == 11.0
    assert http["requests"] == 32 and http["codes"] == {"OK": 32}
    assert http["per_s"] == 2.0
    # All 22 in (0.0025, 0.005]: the rank interpolated within it, as histogram_quantile does.
    assert http["p50_ms"] == pytest.approx(2.5 + 2.5 * 11 / 22)
    assert http["p99_ms"] == pytest.approx(2.5 + 2.5 * 0.99)


def test_after_a_quiet_spell_the_rates_are_of_the_last_seconds_from_the_second_report_on(
        metrics: Metrics, clock: Clock) -> None:
    stats = Stats(metrics.registry, window_s=10, clock=clock)
    for _ in range(12):  # someone watched: a ring of one-second snapshots
        clock.now += 1
        stats.report(INDEX)
    answer(metrics, 10, 2.0)  # slow, and then nobody asks for 9.5 minutes
    clock.now += 570
    # Nothing newer to start from: the rate is over the quiet spell, and window_s says so.
    assert stats.report(INDEX)["window_s"] == 570.0
    for second in range(1, 14):
        answer(metrics, 100, 0.003)
        clock.now += 1
        report = stats.report(INDEX)
        http = model(report, "iris")["transports"]["http"]
        # The snapshot left from before the spell is not the baseline once one a second old is there
        # (as Prometheus' rate() starts from the first sample inside its range): the window grows
        # from 1 s to 10 s, and the slow requests are not in it.
        assert report["window_s"] == min(second, 10)
        assert http["per_s"] == 100.0 and http["p99_ms"] == pytest.approx(4.975)


def test_quantiles_follow_prometheus_histogram_quantile() -> None:
    buckets = {0.1: 50.0, 0.25: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.15 * 49 / 50)
    assert quantile(0.25, buckets) == pytest.approx(0.05)  # the first bucket starts at 0
    # In the +Inf bucket: the highest finite bound; nothing counted: no quantile.
    assert quantile(0.99, {0.1: 1.0, 10.0: 1.0, float("inf"): 5.0}) == 10.0
    assert quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.5, {}) is None


def test_latency_of_all_transports_adds_their_buckets(metrics: Metrics, clock: Clock) -> None:
    stats = Stats(metrics.registry, clock=clock)
    answer(metrics, 50, 0.003)  # (0.0025, 0.005]
    answer(metrics, 50, 0.2, transport="grpc")  # (0.1, 0.25]
    clock.now += 1
    iris = model(stats.report(INDEX), "iris")
    assert iris["transports"]["http"]["p99_ms"] == pytest.approx(4.975)
    assert iris["transports"]["grpc"]["p50_ms"] == pytest.approx(175.0)
    assert iris["all"]["p50_ms"] == pytest.approx(5.0) and iris["all"]["p99_ms"] == pytest.approx(247.0)


def test_error_rates_by_code_per_transport_and_together(metrics: Metrics, clock: Clock) -> None:
    stats = Stats(metrics.registry, clock=clock)
    answer(metrics, 37, 0.001)
    answer(metrics, 5, 0.001, "INVALID_INPUT")
    answer(metrics, 8, 0.001, "MODEL_ERROR")
    answer(metrics, 10, 0.001, transport="ws")
    clock.now += 1
    iris = model(stats.report(INDEX), "iris")
    http = iris["transports"]["http"]
    assert http["codes"] == {"INVALID_INPUT": 5, "MODEL_ERROR": 8, "OK": 37}
    assert http["errors"] == {"INVALID_INPUT": 0.1, "MODEL_ERROR": 0.16} and http["error_rate"] == 0.26
    assert iris["transports"]["ws"]["error_rate"] == 0.0 and iris["transports"]["ws"]["errors"] == {}
    assert iris["all"]["errors"] == {"INVALID_INPUT": 0.08333, "MODEL_ERROR": 0.1333}
    # A window without requests has no error rate (not 0%: nothing was measured).
    clock.now += 20
    stats.report(INDEX)
    clock.now += 11
    quiet = model(stats.report(INDEX), "iris")["transports"]["http"]
    assert quiet["error_rate"] is None and quiet["p99_ms"] is None and quiet["per_s"] == 0.0
    assert quiet["codes"] == {"INVALID_INPUT": 5, "MODEL_ERROR": 8, "OK": 37}


def test_cache_hit_rate_per_version_over_the_window(metrics: Metrics, clock: Clock) -> None:
    stats = Stats(metrics.registry, window_s=10, clock=clock)
    metrics.cache_lookups.labels("iris", "1.0.0", "miss").inc(10)
    clock.now += 1
    stats.report(INDEX)
    clock.now += 10
    metrics.cache_lookups.labels("iris", "1.0.0", "hit").inc(9)
    metrics.cache_lookups.labels("iris", "1.0.0", "miss").inc(1)
    versions = model(stats.report(INDEX), "iris")["versions"]
    assert versions[0] == {"version": "1.0.0", "state": "READY", "reason": "",
                           "cache": {"hits": 9, "misses": 11, "hit_rate": 0.9}}
    assert versions[1]["cache"] is None  # 2.0.0 has no cache (or no lookups yet)


def test_batch_sizes_queue_depth_and_models_loaded(metrics: Metrics, clock: Clock) -> None:
    stats = Stats(metrics.registry, clock=clock)
    for rows in (1, 1, 3, 8, 300):
        metrics.batch_rows.labels("iris").observe(rows)
    metrics.pending.labels("iris").set(4)
    metrics.models_loaded.set(3)  # every model's versions: not what a key limited to some is shown
    clock.now += 2
    report = stats.report(INDEX)
    iris = model(report, "iris")
    assert iris["batches"] == {"calls": 5, "rows": 313, "per_s": 2.5, "mean_rows": 62.6,
                               "sizes": {"1": 2, "4": 1, "8": 1, "1024": 1}}
    # The versions listed that are READY: iris 1.0.0 of the three; none of digits'.
    assert iris["pending"] == 4 and report["models_loaded"] == 1
    assert stats.report(INDEX, lambda name: name == "digits")["models_loaded"] == 0


def test_every_model_and_version_with_its_state_and_unknown_names_after(metrics: Metrics, clock: Clock) -> None:
    stats = Stats(metrics.registry, clock=clock)
    answer(metrics, 2, 0.001, "MODEL_NOT_FOUND", name="<unknown>")
    report = stats.report(INDEX)
    shown = [(m["name"], [(v["version"], v["state"], v["reason"]) for v in m["versions"]]) for m in report["models"]]
    assert shown == [
        ("iris", [("1.0.0", "READY", ""), ("2.0.0", "LOADING", "")]),
        ("digits", [("1.0.0", "UNAVAILABLE", "not loaded")]),
        ("<unknown>", [])]
    assert model(report, "<unknown>")["all"]["codes"] == {"MODEL_NOT_FOUND": 2}
    assert report["window_s"] == 0.0 and model(report, "iris")["all"]["per_s"] is None  # no time has passed
    assert [m["name"] for m in stats.report(INDEX, sees=lambda name: name == "digits")["models"]] == ["digits"]


def test_history_has_a_point_a_second_over_the_last_minute(metrics: Metrics, clock: Clock) -> None:
    stats = Stats(metrics.registry, clock=clock)
    for second in range(90):
        answer(metrics, second % 5, 0.003)
        clock.now += 0.5
        stats.report(INDEX)  # twice a second: a snapshot is kept once a second
        clock.now += 0.5
        stats.report(INDEX)
    history = model(stats.report(INDEX), "iris")["history"]
    assert history["t"] == [float(t) for t in range(-59, 1)]
    assert history["per_s"] == [float(second % 5) for second in range(30, 90)]
    assert history["p99_ms"] == [None if second % 5 == 0 else pytest.approx(4.975) for second in range(30, 90)]
    assert len(stats.ring) == 12 and len(stats.points) == 61  # snapshots for the 10 s window only
