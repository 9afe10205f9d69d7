"""hostd.feedback: labels joined with predictions, and the live quality figures they give."""

from __future__ import annotations

import collections
import math
from typing import Any

import anyio
import pytest

from hostd.capture import Capture
from hostd.configfile import parse_settings
from hostd.dataplane import DataPlane
from hostd.errors import ConfigError, Forbidden, InvalidInput, ModelNotFound
from hostd.feedback import Feedback, Target, target_of
from hostd.observability import Metrics
from hostd.registry import Registry
from hostd.settings import FeedbackSettings, HostSettings, ModelFeedbackSettings
from tests.support.toy import EchoOutput

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def plane(settings: FeedbackSettings | None = None, *, on: bool = True, **model: Any) -> DataPlane:
    """A data plane serving echo, feedback on (with ``settings``) unless ``on`` is False."""
    registry = Registry.from_settings(HostSettings.model_validate(
        {"models": [{"class_path": "tests.support.toy:EchoModel", **model}]}))
    metrics = Metrics()
    feedback = Feedback(settings or FeedbackSettings(), metrics) if on else None
    dataplane = DataPlane(registry, metrics, capture=Capture(registry, feedback=feedback))
    dataplane.set_ready()
    return dataplane


def gauge(dataplane: DataPlane, metric: str) -> float | None:
    return dataplane.metrics.registry.get_sample_value(
        "hostd_model_quality", {"model": "echo", "version": "1.0.0", "metric": metric})


def counted(dataplane: DataPlane, outcome: str) -> float | None:
    return dataplane.metrics.registry.get_sample_value("hostd_feedback_total", {"model": "echo", "outcome": outcome})


async def test_labels_for_a_known_stream_give_the_exact_accuracy() -> None:
    dataplane = plane(feedback={"field": "text"})  # the echoed text, upper-cased: a class
    for index in range(20):
        await dataplane.predict("echo", {"x": index, "text": "cat"}, request_id=f"r{index}")
    # The model answers "CAT" every time: 15 labels agree, 5 do not.
    for index in range(20):
        answer = await dataplane.label("echo", f"r{index}", "CAT" if index % 4 else "DOG")
        assert answer == {"request_id": f"r{index}", "model": "echo", "version": "1.0.0", "joined": True}
    assert gauge(dataplane, "accuracy") == 15 / 20
    assert dataplane.capture.feedback.quality() == [  # type: ignore[union-attr]
        {"model": "echo", "version": "1.0.0", "kind": "classification", "labels": 20, "accuracy": 0.75}]


async def test_labels_for_a_regressor_give_the_exact_mae_and_rmse() -> None:
    dataplane = plane()  # y, a float: a regression
    errors = [1.0, -2.0, 0.5, 0.0, 3.0]
    for index, error in enumerate(errors):
        prediction = await dataplane.predict("echo", {"x": index}, request_id=f"r{index}")
        await dataplane.label("echo", f"r{index}", prediction.output["y"] - error)
    assert gauge(dataplane, "mae") == pytest.approx(sum(abs(e) for e in errors) / 5)
    assert gauge(dataplane, "rmse") == pytest.approx(math.sqrt(sum(e * e for e in errors) / 5))


async def test_the_window_keeps_the_last_labels_only() -> None:
    dataplane = plane(FeedbackSettings(window=4), feedback={"field": "text"})
    for index in range(8):
        await dataplane.predict("echo", {"x": 1, "text": "a"}, request_id=f"r{index}")
        await dataplane.label("echo", f"r{index}", "B" if index < 4 else "A")  # wrong 4 times, then right 4
    assert gauge(dataplane, "accuracy") == 1.0


async def test_an_unknown_or_forgotten_request_id_is_counted_not_an_error() -> None:
    dataplane = plane(FeedbackSettings(remember=2))
    for index in range(3):
        await dataplane.predict("echo", {"x": index}, request_id=f"r{index}")
    forgotten = await dataplane.label("echo", "r0", 0.0)  # the oldest of three, with room for two
    assert forgotten["joined"] is False and "unknown, or too old" in forgotten["reason"]
    assert (await dataplane.label("echo", "never-sent", 0.0))["joined"] is False
    assert (await dataplane.label("echo", "r1", 2.0))["joined"] is True
    assert (await dataplane.label("echo", "r1", 2.0))["joined"] is False  # one label per prediction
    assert (counted(dataplane, "unknown"), counted(dataplane, "joined"), counted(dataplane, "duplicate")) == (2, 1, 1)


async def test_a_request_of_several_rows_takes_a_list_of_labels() -> None:
    dataplane = plane()
    await dataplane.predict_many("echo", [{"x": 1}, {"x": 2}], request_id="two")
    with pytest.raises(InvalidInput, match="had 2 rows: give a list of 2 labels"):
        await dataplane.label("echo", "two", 2.0)
    await dataplane.predict_many("echo", [{"x": 1}, {"x": 2}], request_id="two")
    await dataplane.label("echo", "two", [2.0, 5.0])
    assert gauge(dataplane, "mae") == 0.5


async def test_a_label_that_cannot_be_compared_is_invalid_input() -> None:
    dataplane = plane()
    await dataplane.predict("echo", {"x": 1}, request_id="r")
    with pytest.raises(InvalidInput, match="a regression label must be a finite number"):
        await dataplane.label("echo", "r", "two")
    assert counted(dataplane, "invalid") == 1


async def test_feedback_is_refused_while_off_and_for_models_not_served() -> None:
    with pytest.raises(Forbidden, match="feedback is off"):
        await plane(on=False).label("echo", "r", 1)
    with pytest.raises(ModelNotFound):
        await plane().label("nope", "r", 1)
    with pytest.raises(InvalidInput, match="'label' is required"):
        await plane().label("echo", "r", None)


async def test_a_late_label_is_joined_from_the_log_once() -> None:
    record = {"request_id": "old", "model": "echo", "version": "1.0.0", "outputs": [{"y": 4.0, "text": ""}]}

    async def lookup(request_id: str) -> dict[str, Any] | None:
        return record if request_id == "old" else None

    dataplane = plane()
    dataplane.capture.feedback._lookup = lookup  # type: ignore[union-attr]
    assert (await dataplane.label("echo", "old", 3.0))["joined"] is True
    assert (await dataplane.label("echo", "old", 3.0))["joined"] is False  # still in the log: graded once
    assert gauge(dataplane, "mae") == 1.0


def test_the_compared_field_is_the_first_unless_named() -> None:
    assert target_of(EchoOutput, ModelFeedbackSettings()) == Target("y", "regression")  # a float
    assert target_of(EchoOutput, ModelFeedbackSettings(field="text")) == Target("text", "classification")


def test_a_feedback_field_the_output_lacks_is_a_config_error() -> None:
    settings = parse_settings("models:\n  - class_path: tests.support.toy:EchoModel\n    feedback: {field: label}\n",
                              "host.yaml")
    with pytest.raises(ConfigError, match=r"host.yaml:3: feedback.field: the output has no field 'label'"):
        Registry.from_settings(settings)


def two_versions(factor: float, routing: dict[str, Any]) -> tuple[DataPlane, Metrics]:
    """echo 1.0.0 (y = 2x) and 2.0.0 (y = factor x), routed by ``routing``, with feedback on."""
    settings = HostSettings.model_validate({"models": [
        {"class_path": "tests.support.toy:EchoModel", "configuration": {"version": version, "factor": by}}
        for version, by in (("1.0.0", 2.0), ("2.0.0", factor))], "routing": {"echo": routing}})
    registry = Registry.from_settings(settings)
    metrics = Metrics()
    dataplane = DataPlane(registry, metrics, capture=Capture(registry, feedback=Feedback(FeedbackSettings(), metrics)))
    dataplane.set_ready()
    return dataplane, metrics


async def test_a_label_grades_the_primary_and_its_shadow_side_by_side() -> None:
    dataplane, metrics = two_versions(2.5, {"default_version": "1.0.0", "shadow": {"version": "2.0.0"}})
    async with anyio.create_task_group() as tg:
        tg.start_soon(dataplane.run_shadows)
        for index in range(4):
            await dataplane.predict("echo", {"x": 2}, request_id=f"r{index}")
        with anyio.fail_after(10):  # the shadow answers off the request's path
            while (metrics.registry.get_sample_value("hostd_shadow_requests_total", {
                    "model": "echo", "primary": "1.0.0", "shadow": "2.0.0", "outcome": "compared"}) or 0) < 4:
                await anyio.sleep(0.001)
        tg.cancel_scope.cancel()
    for index in range(4):
        joined = await dataplane.label("echo", f"r{index}", 4.0)  # the truth: what 1.0.0 answers
        assert (joined["version"], joined["shadow_versions"]) == ("1.0.0", ["2.0.0"])
    figures = {item["version"]: item["mae"] for item in dataplane.capture.feedback.quality()}  # type: ignore[union-attr]
    assert figures == {"1.0.0": 0.0, "2.0.0": 1.0}  # 2.5 x 2 = 5, one off


async def test_canary_versions_are_graded_each_on_its_own_answers() -> None:
    dataplane, _ = two_versions(3.0, {"traffic": {"1.0.0": 50, "2.0.0": 50}})
    versions: collections.Counter[str] = collections.Counter()
    for index in range(200):
        answered = await dataplane.predict("echo", {"x": 1}, request_id=f"r{index}")
        versions[answered.version] += 1
        await dataplane.label("echo", f"r{index}", 2.0)
    quality = {item["version"]: (item["labels"], item["mae"]) for item in dataplane.capture.feedback.quality()}  # type: ignore[union-attr]
    assert quality == {"1.0.0": (versions["1.0.0"], 0.0), "2.0.0": (versions["2.0.0"], 1.0)}


async def test_what_is_remembered_for_a_label_is_bounded_whatever_the_client_sends() -> None:
    dataplane = plane(feedback={"field": "text"})
    await dataplane.predict("echo", {"x": 1, "text": "a"}, request_id="x" * 257)  # longer than any label names
    await dataplane.predict("echo", {"x": 1, "text": "b" * 300}, request_id="long-text")  # not a class
    await dataplane.predict("echo", {"x": 1, "text": "c"}, request_id="fine")
    assert dataplane.capture.feedback._recent.keys() == {"fine"}  # type: ignore[union-attr]


async def test_a_label_that_does_not_fit_changes_nothing() -> None:
    dataplane = plane()
    await dataplane.predict_many("echo", [{"x": 1}, {"x": 2}], request_id="two")  # y: 2.0, 4.0
    with pytest.raises(ModelNotFound):
        await dataplane.label("other", "two", [2.0, 4.0])
    for wrong in (2.0, [2.0, "four"], [2.0, 1e200]):  # a row short; a text for a number; no measurement
        with pytest.raises(InvalidInput):
            await dataplane.label("echo", "two", wrong)
    assert gauge(dataplane, "mae") is None  # nothing was scored
    assert (await dataplane.label("echo", "two", [2.0, 5.0]))["joined"] is True  # still remembered
    assert gauge(dataplane, "mae") == 0.5


async def test_quality_figures_are_exact_after_extreme_labels_leave_the_window() -> None:
    dataplane = plane(FeedbackSettings(window=2))
    for index, label in enumerate((1e140, 3.0, 3.0)):  # y = 2; the first error is huge, then 1 and 1
        await dataplane.predict("echo", {"x": 1}, request_id=f"r{index}")
        await dataplane.label("echo", f"r{index}", label)
    assert (gauge(dataplane, "mae"), gauge(dataplane, "rmse")) == (1.0, 1.0)


async def test_remember_counts_rows_so_big_requests_cannot_outgrow_it() -> None:
    dataplane = plane(FeedbackSettings(remember=10))
    await dataplane.predict_many("echo", [{"x": 1}] * 8, request_id="eight")
    await dataplane.predict_many("echo", [{"x": 1}] * 4, request_id="four")  # 12 rows: "eight" goes
    assert (await dataplane.label("echo", "eight", [2.0] * 8))["joined"] is False
    assert (await dataplane.label("echo", "four", [2.0] * 4))["joined"] is True
