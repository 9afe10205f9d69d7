"""hostd.dataplane: the one path every transport calls (admit, validate, execute, check the output)."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from hostd.clients import Client
from hostd.dataplane import OFF_LOOP_ROWS, DataPlane, Prediction
from hostd.errors import InvalidInput, ModelError, ModelNotFound, NotReady, Overloaded, Timeout
from hostd.registry import Registry
from hostd.settings import HostSettings
from tests.support.toy import EchoInput

pytestmark = pytest.mark.anyio

TOY = "tests.support.toy"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def echo(class_name: str = "EchoModel", module: str = TOY, **settings: Any) -> dict[str, Any]:
    return {"class_path": f"{module}:{class_name}", **settings}


def dataplane(*models: dict[str, Any], ready: bool = True) -> DataPlane:
    registry = Registry.from_settings(HostSettings.model_validate({"models": list(models or [echo()])}))
    plane = DataPlane(registry)
    if ready:
        plane.set_ready()
    return plane


async def wait_until(condition: Callable[[], bool], timeout: float = 5) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.001)


def requests(plane: DataPlane, code: str, model: str = "echo") -> float | None:
    return plane.metrics.registry.get_sample_value(
        "hostd_requests_total", {"model": model, "transport": "inproc", "code": code})


# --- the happy path -------------------------------------------------------------------------------


async def test_a_valid_prediction() -> None:
    prediction = await dataplane().predict("echo", {"x": 2, "text": "hi"})
    assert prediction == Prediction("echo", "1.0.0", [{"y": 4.0, "text": "HI"}])
    assert prediction.output == {"y": 4.0, "text": "HI"}


async def test_an_input_schema_instance_is_accepted_as_is() -> None:
    assert (await dataplane().predict("echo", EchoInput(x=3))).output["y"] == 6


async def test_a_version_can_be_asked_for() -> None:
    plane = dataplane(echo(configuration={"version": "1.0.0", "factor": 1}),
                      echo(configuration={"version": "2.0.0", "factor": 5}))
    assert (await plane.predict("echo", {"x": 1})).version == "2.0.0"
    old = await plane.predict("echo", {"x": 1}, "1.0.0")
    assert (old.version, old.output["y"]) == ("1.0.0", 1)


async def test_predict_many_calls_the_model_once_for_all_rows() -> None:
    plane = dataplane()
    prediction = await plane.predict_many("echo", [{"x": 1}, {"x": 2}, {"x": 3}])
    assert [row["y"] for row in prediction.outputs] == [2, 4, 6]
    assert plane.model("echo").model.batches == [3]


async def test_an_async_predict_model_works() -> None:
    plane = dataplane(echo("AsyncEchoModel"))
    assert plane.model("echo").is_async
    assert (await plane.predict("echo", {"x": 21})).output == {"y": 42.0, "text": ""}


# --- input errors and lookup ----------------------------------------------------------------------


async def test_invalid_input_lists_each_bad_field() -> None:
    with pytest.raises(InvalidInput) as raised:
        await dataplane().predict("echo", {"x": 5000, "fail": "maybe"})
    fields = {problem["field"]: problem["type"] for problem in raised.value.details}
    assert fields == {"x": "less_than_equal", "fail": "bool_parsing"}
    assert "invalid input for model 'echo'" in raised.value.message
    assert "x: Input should be less than or equal to 1000" in raised.value.message


async def test_a_missing_field_is_invalid_input() -> None:
    with pytest.raises(InvalidInput) as raised:
        await dataplane().predict("echo", {"text": "no x"})
    assert raised.value.details == [{"field": "x", "message": "Field required", "type": "missing"}]


async def test_an_invalid_row_in_a_batch_is_named_by_its_index() -> None:
    with pytest.raises(InvalidInput) as raised:
        await dataplane().predict_many("echo", [{"x": 1}, {"x": "two"}])
    assert [problem["field"] for problem in raised.value.details] == ["1.x"]


async def test_no_rows_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="no input rows"):
        await dataplane().predict_many("echo", [])


async def test_an_unknown_model_or_version_is_model_not_found() -> None:
    plane = dataplane()
    with pytest.raises(ModelNotFound, match=r"served: echo"):
        await plane.predict("iris", {"x": 1})
    with pytest.raises(ModelNotFound, match=r"no version '9\.9\.9'"):
        await plane.predict("echo", {"x": 1}, "9.9.9")


async def test_a_model_without_endpoint_is_listed_but_not_served() -> None:
    plane = dataplane(echo(create_endpoint=False))
    assert [served.name for served in plane.models()] == ["echo"]
    with pytest.raises(ModelNotFound, match="create_endpoint: false"):
        await plane.predict("echo", {"x": 1})


# --- readiness and draining -----------------------------------------------------------------------


async def test_not_ready_before_set_ready() -> None:
    plane = dataplane(ready=False)
    assert not plane.ready
    with pytest.raises(NotReady, match="starting"):
        await plane.predict("echo", {"x": 1})


async def test_not_ready_while_draining() -> None:
    plane = dataplane()
    plane.start_draining()
    assert not plane.ready
    with pytest.raises(NotReady, match="draining"):
        await plane.predict("echo", {"x": 1})


async def test_wait_idle_returns_only_after_in_flight_requests_finish(gates: Callable[[], Path]) -> None:
    plane = dataplane(echo("GatedEcho"))
    gate = gates()
    results: list[Prediction] = []
    idle = anyio.Event()

    async def held() -> None:
        results.append(await plane.predict("echo", {"x": 1, "gate": str(gate)}))

    async def waiter() -> None:
        await plane.wait_idle()
        idle.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(held)
        await wait_until(lambda: plane.model("echo").pending == 1)
        plane.start_draining()
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not idle.is_set(), "wait_idle returned while a request was in the model"
        gate.touch()
        with anyio.fail_after(5):
            await idle.wait()
        assert [result.output["y"] for result in results] == [2]  # answered, not dropped


async def test_wait_idle_returns_at_once_when_nothing_is_in_flight() -> None:
    plane = dataplane()
    plane.start_draining()
    with anyio.fail_after(1):
        await plane.wait_idle()


# --- time limits ----------------------------------------------------------------------------------


async def test_a_slow_model_times_out_within_about_timeout_ms(gates: Callable[[], Path]) -> None:
    plane = dataplane(echo("GatedEcho", timeout_ms=100))
    started = time.monotonic()
    # The call waits in the model for a gate that stays shut: only the timeout can end it.
    with pytest.raises(Timeout, match=r"model 'echo' did not answer within 100 ms"):
        await plane.predict("echo", {"x": 1, "gate": str(gates())})
    assert time.monotonic() - started >= 0.09  # not before timeout_ms
    assert plane.model("echo").pending == 0


async def test_a_slow_async_model_times_out() -> None:
    plane = dataplane(echo("AsyncEchoModel", timeout_ms=100))
    with anyio.fail_after(10), pytest.raises(Timeout):  # a hang guard: the model would take 60 s
        await plane.predict("echo", {"x": 1, "delay_ms": 60_000})


async def test_a_client_deadline_shorter_than_timeout_ms_wins(gates: Callable[[], Path]) -> None:
    plane = dataplane(echo("GatedEcho", timeout_ms=5000))
    # The message names the limit that struck: the client's 100 ms, not timeout_ms.
    with pytest.raises(Timeout, match=r"within 100 ms"):
        await plane.predict("echo", {"x": 1, "gate": str(gates())}, deadline_s=0.1)


async def test_a_client_deadline_longer_than_timeout_ms_does_not_extend_it() -> None:
    plane = dataplane(echo(timeout_ms=100))
    with pytest.raises(Timeout, match=r"within 100 ms"):
        await plane.predict("echo", {"x": 1, "delay_ms": 1000}, deadline_s=30)


# --- overload -------------------------------------------------------------------------------------


async def test_max_pending_exceeded_is_overloaded_while_the_others_complete(gates: Callable[[], Path]) -> None:
    plane = dataplane(echo("GatedEcho", max_pending=2, workers={"count": 2}))
    served = plane.model("echo")
    gate = gates()
    results: list[float] = []

    async def held() -> None:
        results.append((await plane.predict("echo", {"x": 1, "gate": str(gate)})).output["y"])

    async with anyio.create_task_group() as tg:
        tg.start_soon(held)
        tg.start_soon(held)
        await wait_until(lambda: served.pending == 2)
        with pytest.raises(Overloaded, match=r"max_pending: 2"):
            await plane.predict("echo", {"x": 1})
        gate.touch()
    assert results == [2, 2]
    # Once the queue drains, the model takes requests again.
    assert (await plane.predict("echo", {"x": 1})).output["y"] == 2


async def test_one_client_holds_at_most_its_share_and_others_still_get_in(gates: Callable[[], Path]) -> None:
    # The adversarial run's unfair case: one client must not fill max_pending alone.
    plane = dataplane(echo("GatedEcho", max_pending=8, max_pending_per_client=2, workers={"count": 4}))
    served = plane.model("echo")
    greedy, other = Client("greedy"), Client("other")
    gate = gates()
    results: list[float] = []

    async def held(client: Client) -> None:
        results.append((await plane.predict("echo", {"x": 1, "gate": str(gate)}, client=client)).output["y"])

    async with anyio.create_task_group() as tg:
        tg.start_soon(held, greedy)
        tg.start_soon(held, greedy)
        await wait_until(lambda: served.pending == 2)
        with pytest.raises(Overloaded, match=r"this client already has 2 requests pending for model 'echo'"):
            await plane.predict("echo", {"x": 1}, client=greedy)
        tg.start_soon(held, other)  # the model still has room for everyone else
        await wait_until(lambda: served.pending == 3)
        gate.touch()
    assert results == [2, 2, 2]
    assert greedy.pending == {"echo": 0} and other.pending == {"echo": 0}
    assert (await plane.predict("echo", {"x": 1}, client=greedy)).output["y"] == 2  # its share is free again


def test_the_share_per_client_defaults_to_a_quarter_of_max_pending_and_cannot_exceed_it() -> None:
    assert dataplane(echo(max_pending=1024)).model("echo").settings.max_pending_per_client == 256
    assert dataplane(echo(max_pending=2)).model("echo").settings.max_pending_per_client == 1
    with pytest.raises(ValueError, match=r"max_pending_per_client \(9\) cannot exceed max_pending \(8\)"):
        dataplane(echo(max_pending=8, max_pending_per_client=9))


async def test_refusal_answers_without_a_body_what_a_prediction_would_be_refused_with(
        gates: Callable[[], Path]) -> None:
    plane = dataplane(echo("GatedEcho", max_pending=1))
    assert plane.refusal("echo", transport="inproc") is None
    assert isinstance(plane.refusal("nope", transport="inproc"), ModelNotFound)
    assert isinstance(plane.refusal("echo", "9.9.9", transport="inproc"), ModelNotFound)
    gate = gates()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(plane.predict, "echo", {"x": 1, "gate": str(gate)}))
        await wait_until(lambda: plane.model("echo").pending == 1)
        refused = plane.refusal("echo", transport="inproc")
        assert isinstance(refused, Overloaded) and "max_pending: 1" in refused.message
        gate.touch()
    assert requests(plane, "OVERLOADED") == 1  # counted like any refused request
    plane.start_draining()
    assert isinstance(plane.refusal("echo", transport="inproc"), NotReady)


async def test_a_flood_of_refusals_is_logged_as_one_line_then_a_count(gates: Callable[[], Path]) -> None:
    plane = dataplane(echo(max_pending=1))
    plane.start_draining()
    with capture_logs() as logs:
        for _ in range(500):
            assert isinstance(plane.refusal("echo", transport="inproc"), NotReady)
    failed = [line for line in logs if line["event"] == "prediction failed"]
    assert len(failed) == 1 and failed[0]["code"] == "NOT_READY"
    assert requests(plane, "NOT_READY", "<unknown>") == 500  # the metrics still count every one


async def test_a_big_request_validates_off_the_event_loop_so_others_are_answered_meanwhile(
        gates: Callable[[], Path]) -> None:
    # The adversarial run: one 65,000-row request (1 MB) held every transport for 254 ms. Here the big
    # request's validation waits for a gate that only opens once a small request has been answered.
    plane = dataplane(echo("CheckedEcho"))
    gate = gates()
    big = [{"x": 1}] * (OFF_LOOP_ROWS - 1) + [{"x": 1, "check_gate": str(gate)}]
    answers: list[Prediction] = []

    async def send_big() -> None:
        answers.append(await plane.predict_many("echo", big))

    async with anyio.create_task_group() as tg:
        tg.start_soon(send_big)
        await anyio.sleep(0)  # the big request starts validating
        small = await plane.predict("echo", {"x": 2})
        assert small.output["y"] == 4
        gate.touch()
    assert answers[0].outputs[-1]["text"] == "open"  # "shut": the loop was blocked until it timed out
    assert len(answers[0].outputs) == OFF_LOOP_ROWS


# --- model failures -------------------------------------------------------------------------------


async def test_a_model_that_raises_is_a_model_error_and_the_next_request_succeeds() -> None:
    plane = dataplane()
    with pytest.raises(ModelError, match=r"model 'echo' failed: RuntimeError: asked to fail"):
        await plane.predict("echo", {"x": 1, "fail": True})
    assert (await plane.predict("echo", {"x": 1})).output["y"] == 2


async def test_a_model_returning_the_wrong_output_shape_is_a_model_error() -> None:
    plane = dataplane(echo("BadOutputModel"))
    with pytest.raises(ModelError, match=r"model 'echo' returned output that does not match its output sch"):
        await plane.predict("echo", {"x": 1})


async def test_a_model_returning_too_few_outputs_is_a_model_error() -> None:
    plane = dataplane(echo("ShortBatch", module="tests.support.toy_extra"))
    with pytest.raises(ModelError, match=r"returned 0 outputs for 2 inputs"):
        await plane.predict_many("echo", [{"x": 1}, {"x": 2}])


# --- the event loop stays free --------------------------------------------------------------------


async def test_a_model_in_its_worker_does_not_block_the_event_loop(gates: Callable[[], Path]) -> None:
    # The call ends only when this loop opens the gate while the model is in it; a model run on the
    # loop itself would block it, and fail when the gate stays shut (open_within_s).
    plane = dataplane(echo("GatedEcho", configuration={"open_within_s": 10}))
    gate = gates()
    async with anyio.create_task_group() as tg:
        tg.start_soon(plane.predict, "echo", {"x": 1, "gate": str(gate)})
        await wait_until(lambda: plane.model("echo").model.running == 1)
        gate.touch()


# --- metrics --------------------------------------------------------------------------------------


async def test_metrics_count_ok_and_each_error_code() -> None:
    plane = dataplane()
    for _ in range(2):
        await plane.predict("echo", {"x": 1})
    with pytest.raises(InvalidInput):
        await plane.predict("echo", {"x": "one"})
    with pytest.raises(ModelError):
        await plane.predict("echo", {"x": 1, "fail": True})
    with pytest.raises(ModelNotFound):
        await plane.predict("nope", {"x": 1})

    assert requests(plane, "OK") == 2
    assert requests(plane, "INVALID_INPUT") == 1
    assert requests(plane, "MODEL_ERROR") == 1
    assert requests(plane, "MODEL_NOT_FOUND", model="<unknown>") == 1
    assert requests(plane, "TIMEOUT") is None
    assert plane.metrics.registry.get_sample_value(
        "hostd_request_duration_seconds_count", {"model": "echo", "transport": "inproc"}) == 4
    assert plane.metrics.registry.get_sample_value("hostd_models_loaded") == 1


async def test_metrics_are_labelled_by_transport() -> None:
    plane = dataplane()
    await plane.predict("echo", {"x": 1}, transport="grpc")
    assert plane.metrics.registry.get_sample_value(
        "hostd_requests_total", {"model": "echo", "transport": "grpc", "code": "OK"}) == 1
    assert requests(plane, "OK") is None


async def test_metrics_count_timeouts_and_overloads(gates: Callable[[], Path]) -> None:
    plane = dataplane(echo("GatedEcho", max_pending=1))
    served = plane.model("echo")
    held = gates()

    async def answered() -> None:
        await plane.predict("echo", {"x": 1, "gate": str(held)})

    async with anyio.create_task_group() as tg:
        tg.start_soon(answered)
        await wait_until(lambda: served.pending == 1)
        with pytest.raises(Overloaded):
            await plane.predict("echo", {"x": 1})
        held.touch()
    with pytest.raises(Timeout):  # waits for a gate that stays shut
        await plane.predict("echo", {"x": 1, "gate": str(gates())}, deadline_s=0.1)
    assert requests(plane, "TIMEOUT") == 1
    assert requests(plane, "OVERLOADED") == 1
    assert plane.metrics.registry.get_sample_value("hostd_pending", {"model": "echo"}) == 0


async def test_metrics_count_requests_refused_as_not_ready() -> None:
    # A 503 while draining is an answer the client saw; it belongs in hostd_requests_total.
    plane = dataplane()
    plane.start_draining()
    with pytest.raises(NotReady):
        await plane.predict("echo", {"x": 1})
    total = sum(sample.value for metric in plane.metrics.registry.collect() if metric.name == "hostd_requests"
                for sample in metric.samples
                if sample.name == "hostd_requests_total" and sample.labels.get("code") == "NOT_READY")
    assert total == 1


async def test_a_models_own_input_check_is_invalid_input_not_a_model_error() -> None:
    plane = dataplane(echo("StrictEcho", "tests.support.toy_extra"))
    with pytest.raises(InvalidInput, match="x must not be negative"):
        await plane.predict("echo", {"x": -1})
    assert requests(plane, "INVALID_INPUT") == 1.0


@pytest.mark.parametrize("then", ["ready", "draining"])
async def test_until_started_waits_while_hostd_starts_and_not_after(then: str) -> None:
    plane = dataplane(ready=False)
    waited = anyio.Event()

    async def pull() -> None:
        await plane.until_started()
        waited.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(pull)
        await anyio.sleep(0.01)  # the waiter is parked: nothing has started
        assert not waited.is_set()
        plane.set_ready() if then == "ready" else plane.start_draining()
        with anyio.fail_after(5):
            await waited.wait()
    await plane.until_started()  # started: returns at once
