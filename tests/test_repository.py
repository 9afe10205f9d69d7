"""hostd.repository and hostd.routing: loading, unloading and reloading at run time, canary weights and
shadow traffic, in-process (the e2e tests drive the same through tritonclient, SIGHUP and a file watch)."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from hostd.configfile import load_settings
from hostd.dataplane import DataPlane
from hostd.errors import Forbidden, LoadFailed, ModelNotFound
from hostd.repository import ModelRepository
from hostd.settings import HostSettings
from tests.support import toy

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def echo(name: str = "echo", version: str = "1.0.0", **settings: Any) -> dict[str, Any]:
    factor = settings.pop("factor", 2.0)
    return {"class_path": "tests.support.toy:ClosableEcho", "qualified_name": name,
            "configuration": {"name": name, "version": version, "factor": factor}, **settings}


def config(*models: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {"models": list(models), "admin": {"enabled": True}, "shutdown_grace_s": 5, **settings}


async def started(raw: dict[str, Any], path: Path | None = None) -> DataPlane:
    """A ready data plane over a started repository; with ``path``, ``raw`` is written there and the
    repository re-reads that file on reload."""
    if path is not None:
        path.write_text(yaml.safe_dump(raw))
        settings = load_settings(path)
        repository = ModelRepository(settings, reread=lambda: load_settings(path))
    else:
        repository = ModelRepository(HostSettings.model_validate(raw))
    await repository.start()
    plane = DataPlane(repository.registry, repository=repository)
    repository.on_change = plane.models_changed
    plane.set_ready()
    return plane


def states(plane: DataPlane) -> dict[tuple[str, str], tuple[str, str]]:
    return {(e["name"], e["version"]): (e["state"], e["reason"]) for e in plane.repository_index()}


async def answer(plane: DataPlane, model: str = "echo", version: str | None = None) -> tuple[str, float]:
    prediction = await plane.predict(model, {"x": 1}, version)
    return prediction.version, prediction.output["y"]


# -- startup, load, unload -------------------------------------------------------------------------


async def test_startup_loads_only_the_models_named_and_the_index_lists_every_entry() -> None:
    plane = await started(config(echo("echo"), echo("other"), startup=["echo"]))
    assert states(plane) == {("echo", "1.0.0"): ("READY", ""), ("other", ""): ("UNAVAILABLE", "not loaded")}
    with pytest.raises(ModelNotFound):
        await answer(plane, "other")
    assert [e["name"] for e in plane.repository_index(ready_only=True)] == ["echo"]


async def test_load_then_unload_closes_the_model_and_frees_its_name() -> None:
    plane = await started(config(echo("echo"), startup="none"))
    assert plane.metrics.registry.get_sample_value("hostd_models_loaded") == 0
    await plane.admin().load("echo")
    assert await answer(plane) == ("1.0.0", 2.0)
    assert plane.metrics.registry.get_sample_value("hostd_models_loaded") == 1
    closed = len(toy.CLOSED)
    await plane.admin().unload("echo")
    assert toy.CLOSED[closed:] == [("echo", "1.0.0")]
    assert states(plane) == {("echo", "1.0.0"): ("UNAVAILABLE", "unloaded")}
    with pytest.raises(ModelNotFound):
        await answer(plane)
    assert plane.metrics.registry.get_sample_value("hostd_models_loaded") == 0


async def test_an_unknown_name_is_model_not_found() -> None:
    plane = await started(config(echo()))
    with pytest.raises(ModelNotFound, match="no model named 'nope' in the repository"):
        await plane.admin().load("nope")


async def test_admin_calls_are_forbidden_unless_enabled() -> None:
    plane = await started({**config(echo()), "admin": {"enabled": False}})
    with pytest.raises(Forbidden, match="admin calls are off"):
        plane.admin()
    assert plane.repository_index()[0]["state"] == "READY"  # reading the index is not an admin call


async def test_a_model_that_fails_to_load_leaves_everything_else_serving() -> None:
    broken = {"class_path": "tests.support.toy:FailsToLoad", "qualified_name": "broken"}
    plane = await started(config(echo(), broken, startup=["echo"]))
    with pytest.raises(LoadFailed, match=r"parameters\.skops is missing"):
        await plane.admin().load("broken")
    state, reason = states(plane)[("broken", "")]
    assert state == "UNAVAILABLE" and "parameters.skops is missing" in reason
    assert await answer(plane) == ("1.0.0", 2.0)


async def test_an_unloading_model_finishes_its_admitted_requests(gates: Callable[[], Path]) -> None:
    gated = {"class_path": "tests.support.toy:GatedEcho", "timeout_ms": 30_000, "workers": {"count": 2}}
    plane = await started(config(gated))
    gate = gates()
    async with anyio.create_task_group() as tg:
        held: list[Any] = []

        async def hold() -> None:
            held.append(await plane.predict("echo", {"x": 3, "gate": str(gate)}))

        tg.start_soon(hold)
        with anyio.fail_after(10):
            while plane.model("echo").pending == 0:
                await anyio.sleep(0.001)
        tg.start_soon(plane.admin().unload, "echo")
        with anyio.fail_after(10):  # no longer served: new requests are refused at once...
            while True:
                try:
                    plane.model("echo")
                except ModelNotFound:
                    break
                await anyio.sleep(0.001)
        assert states(plane)[("echo", "1.0.0")][0] == "UNLOADING"
        gate.touch()  # ...while the admitted one is answered
    assert held[0].output["y"] == 6.0
    assert states(plane)[("echo", "1.0.0")] == ("UNAVAILABLE", "unloaded")


# -- reload ----------------------------------------------------------------------------------------


async def test_a_reload_serves_the_new_model_before_the_old_one_leaves(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    plane = await started(config(echo(factor=2)), path)
    path.write_text(yaml.safe_dump(config(echo(version="1.1.0", factor=3))))
    answers: list[tuple[str, float]] = []
    async with anyio.create_task_group() as tg:
        done = anyio.Event()

        async def keep_asking() -> None:
            while not done.is_set():  # bounded by the reload below
                answers.append(await answer(plane))
                await anyio.sleep(0)

        tg.start_soon(keep_asking)
        assert plane.repository is not None
        change = await plane.repository.reload()
        done.set()
    assert change.reloaded == ["echo"] and not change.failed
    assert await answer(plane) == ("1.1.0", 3.0)
    assert set(answers) <= {("1.0.0", 2.0), ("1.1.0", 3.0)} and answers  # never an error in between
    assert states(plane) == {("echo", "1.1.0"): ("READY", "")}


async def test_a_reload_applies_the_difference(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    plane = await started(config(echo("kept"), echo("removed"), echo("changed")), path)
    kept = plane.model("kept")
    path.write_text(yaml.safe_dump(config(echo("kept"), echo("changed", factor=5), echo("added"))))
    assert plane.repository is not None
    change = await plane.repository.reload()
    assert (change.loaded, change.reloaded, change.unloaded) == (["added"], ["changed"], ["removed"])
    assert plane.model("kept") is kept  # unchanged: not rebuilt
    assert await answer(plane, "changed") == ("1.0.0", 5.0)
    with pytest.raises(ModelNotFound):
        plane.model("removed")


async def test_an_invalid_config_is_rejected_whole(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    plane = await started(config(echo()), path)
    path.write_text("models:\n  - class_path: tests.support.toy:ClosableEcho\n    workres: {count: 2}\n")
    assert plane.repository is not None
    with pytest.raises(LoadFailed) as caught:
        await plane.repository.reload()
    assert f"{path}:3: models[0].workres: unknown key" in caught.value.message
    assert "still serving the previous one" in caught.value.message
    assert await answer(plane) == ("1.0.0", 2.0)


async def test_a_transport_change_needs_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    plane = await started({**config(echo()), "transports": {"http": {"port": 1}}}, path)
    path.write_text(yaml.safe_dump({**config(echo(), echo("added")), "transports": {"http": {"port": 2}}}))
    assert plane.repository is not None
    with pytest.raises(LoadFailed, match=r"changes transports \(http\), which needs a restart; nothing was applied"):
        await plane.repository.reload()
    with pytest.raises(ModelNotFound):
        plane.model("added")


async def test_a_model_file_in_the_repository_directory_loads_by_its_name(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "extra.yaml").write_text(yaml.safe_dump(echo("extra", factor=7)))
    plane = await started(config(echo(), model_repository="models", startup=["echo"]), tmp_path / "host.yaml")
    assert states(plane)[("extra", "")] == ("UNAVAILABLE", "not loaded")
    await plane.admin().load("extra")
    assert await answer(plane, "extra") == ("1.0.0", 7.0)


async def test_a_broken_model_file_is_named_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "extra.yaml").write_text("class_path: tests.support.toy:ClosableEcho\nbatchng: {}\n")
    with pytest.raises(Exception, match=r"extra.yaml:2: batchng: unknown key"):
        await started(config(echo(), model_repository="models"), tmp_path / "host.yaml")


# -- versions and traffic --------------------------------------------------------------------------


async def test_a_pinned_default_version_answers_requests_without_a_version() -> None:
    plane = await started(config(echo(version="1.0.0"), echo(version="2.0.0", factor=3),
                                 routing={"echo": {"default_version": "1.0.0"}}))
    assert await answer(plane) == ("1.0.0", 2.0)
    assert await answer(plane, version="2.0.0") == ("2.0.0", 3.0)


async def test_serve_newest_keeps_only_the_newest_versions() -> None:
    plane = await started(config(echo(version="1.0.0"), echo(version="1.1.0"), echo(version="2.0.0"),
                                 routing={"echo": {"serve_newest": 2}}))
    assert sorted(m.version for m in plane.models()) == ["1.1.0", "2.0.0"]
    assert states(plane)[("echo", "1.0.0")][1] == "not among the newest 2 versions (routing.serve_newest)"


async def test_canary_weights_split_requests_without_a_version() -> None:
    plane = await started(config(echo(version="1.0.0"), echo(version="2.0.0"),
                                 routing={"echo": {"traffic": {"1.0.0": 90, "2.0.0": 10}}}))
    served = collections.Counter([(await answer(plane))[0] for _ in range(10_000)])
    assert 0.87 <= served["1.0.0"] / 10_000 <= 0.93, served
    assert served["1.0.0"] + served["2.0.0"] == 10_000
    assert await answer(plane, version="2.0.0") == ("2.0.0", 2.0)  # a named version is not re-routed


# -- shadow traffic --------------------------------------------------------------------------------


def shadow_config(shadow_model: dict[str, Any], **shadow: Any) -> dict[str, Any]:
    return config(echo(version="1.0.0"), shadow_model,
                  routing={"echo": {"default_version": "1.0.0", "shadow": {"version": "2.0.0", **shadow}}})


async def mirrored(plane: DataPlane, requests: int, rows: dict[str, Any] | None = None) -> list[Any]:
    """Send ``requests`` predictions while the shadow runner runs; wait until every mirror is done."""
    answers = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(plane.run_shadows)
        await anyio.sleep(0)
        for _ in range(requests):
            answers.append(await plane.predict("echo", rows or {"x": 1}))
        with anyio.fail_after(10):
            while shadow_count(plane, "compared") + shadow_count(plane, "failed") + shadow_count(
                    plane, "dropped") < requests:
                await anyio.sleep(0.001)
        tg.cancel_scope.cancel()
    return answers


def shadow_count(plane: DataPlane, outcome: str, metric: str = "hostd_shadow_requests_total",
                 label: str = "outcome") -> float:
    value = plane.metrics.registry.get_sample_value(
        metric, {"model": "echo", "primary": "1.0.0", "shadow": "2.0.0", label: outcome})
    return value or 0.0


async def test_a_shadow_that_agrees() -> None:
    plane = await started(shadow_config(echo(version="2.0.0")))
    answers = await mirrored(plane, 20, {"x": 1, "text": "a"})
    assert {(a.version, a.output["y"]) for a in answers} == {("1.0.0", 2.0)}
    assert shadow_count(plane, "agree", "hostd_shadow_rows_total", "agreement") == 20
    assert shadow_count(plane, "disagree", "hostd_shadow_rows_total", "agreement") == 0
    diff = plane.metrics.registry.get_sample_value(
        "hostd_shadow_abs_difference_sum", {"model": "echo", "primary": "1.0.0", "shadow": "2.0.0"})
    assert diff == 0.0


async def test_a_shadow_that_disagrees() -> None:
    shouting = {**echo(version="2.0.0", factor=2.5)}
    plane = await started(shadow_config(shouting))
    await mirrored(plane, 10, {"x": 2, "text": "a"})
    labels = {"model": "echo", "primary": "1.0.0", "shadow": "2.0.0"}
    assert plane.metrics.registry.get_sample_value("hostd_shadow_abs_difference_sum", labels) == pytest.approx(10.0)
    assert plane.metrics.registry.get_sample_value("hostd_shadow_abs_difference_count", labels) == 10


async def test_a_failing_shadow_does_not_change_the_primary_answer() -> None:
    failing = {**echo(version="2.0.0"), "class_path": "tests.support.toy:BadOutputModel"}
    plane = await started(shadow_config(failing))
    answers = await mirrored(plane, 5)
    assert [a.output["y"] for a in answers] == [2.0] * 5
    assert shadow_count(plane, "failed") == 5


async def test_a_slow_shadow_neither_slows_the_primary_nor_grows_its_queue(gates: Callable[[], Path]) -> None:
    gate = gates()
    held = {**echo(version="2.0.0"), "class_path": "tests.support.toy:HeldEcho", "timeout_ms": 30_000}
    held["configuration"] = {**held["configuration"], "gate": str(gate)}
    plane = await started(shadow_config(held, max_queue=2))
    async with anyio.create_task_group() as tg:
        tg.start_soon(plane.run_shadows)
        await anyio.sleep(0)
        # The shadow holds the first mirror in the model; 2 more wait in its queue; the other 7 are
        # dropped. Every primary answer comes meanwhile, while the shadow is stuck.
        answers = [await plane.predict("echo", {"x": 1}) for _ in range(10)]
        assert [a.output["y"] for a in answers] == [2.0] * 10
        assert shadow_count(plane, "dropped") == 7
        gate.touch()
        with anyio.fail_after(10):
            while shadow_count(plane, "compared") < 3:
                await anyio.sleep(0.001)
        tg.cancel_scope.cancel()


async def test_a_prediction_log_feedback_or_tracing_change_needs_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    plane = await started(config(echo()), path)
    path.write_text(yaml.safe_dump({**config(echo(), echo("added")), "feedback": {},
                                    "prediction_log": {"sink": "file"}, "tracing": {"sample_ratio": 0.5}}))
    assert plane.repository is not None
    with pytest.raises(LoadFailed, match=r"changes prediction_log, feedback, tracing, which needs a restart; nothing"):
        await plane.repository.reload()
    with pytest.raises(ModelNotFound):
        plane.model("added")
