"""hostd.kernel: the one place rows run through a model (validate, call, isolate, count, deadline)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hostd import kernel
from hostd.errors import InvalidInput, ModelError, Timeout
from tests.support.toy import EchoInput, EchoOutput

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Model:
    """A fake predict_batch that records each call and fails on rows asked to fail."""

    def __init__(self, short_by: int = 0) -> None:
        self.calls: list[list[float]] = []
        self.short_by = short_by  # return this many outputs too few when a call has a short row

    async def __call__(self, rows: list[EchoInput]) -> list[Any]:
        self.calls.append([row.x for row in rows])
        if any(row.fail for row in rows):
            raise RuntimeError("asked to fail")
        outputs = [EchoOutput(y=row.x * 2) for row in rows]
        if any(row.text == "short" for row in rows):
            return outputs[: len(outputs) - self.short_by]
        return outputs


def units(*specs: dict[str, Any]) -> list[list[EchoInput]]:
    return [[EchoInput(**spec)] for spec in specs]


def ys(outcome: kernel.Outcome) -> list[float]:
    assert not isinstance(outcome, Exception), outcome
    return [output.y for output in outcome]


def y(outcome: Any) -> float:
    """An outcome of execute_rows: one row's output."""
    assert not isinstance(outcome, Exception), outcome
    return float(outcome.y)


# --- execute ---------------------------------------------------------------------------------------


async def test_all_units_go_to_the_model_in_one_call() -> None:
    model = Model()
    outcomes = await kernel.execute(model, [[EchoInput(x=1), EchoInput(x=2)], [EchoInput(x=3)]], model="m")
    assert [ys(outcome) for outcome in outcomes] == [[2, 4], [6]]
    assert model.calls == [[1, 2, 3]]


async def test_a_failing_unit_fails_alone_and_is_found_by_splitting_not_row_by_row() -> None:
    model = Model()
    specs = [{"x": i, "fail": i == 5} for i in range(16)]
    outcomes = await kernel.execute(model, units(*specs), model="m")
    assert isinstance(outcomes[5], ModelError)
    assert outcomes[5].message == "model 'm' failed: RuntimeError: asked to fail"
    assert [ys(outcome) for i, outcome in enumerate(outcomes) if i != 5] == [[2 * i] for i in range(16) if i != 5]
    # 1 call for all, then halves down to the bad row: 2 calls per level, log2(16) = 4 levels.
    assert len(model.calls) == 1 + 2 * 4 < 16


async def test_several_failing_units_each_fail_and_the_rest_succeed() -> None:
    outcomes = await kernel.execute(Model(), units(*[{"x": i, "fail": i in (0, 3, 7)} for i in range(8)]),
                                    model="m")
    assert [i for i, outcome in enumerate(outcomes) if isinstance(outcome, ModelError)] == [0, 3, 7]


async def test_a_wrong_output_count_is_isolated_like_a_failure() -> None:
    outcomes = await kernel.execute(Model(short_by=1), units({"x": 1}, {"x": 2, "text": "short"}, {"x": 3}),
                                    model="m")
    assert ys(outcomes[0]) == [2] and ys(outcomes[2]) == [6]
    assert isinstance(outcomes[1], ModelError)
    assert outcomes[1].message == "model 'm' returned 0 outputs for 1 inputs"


async def test_a_models_own_schema_check_is_invalid_input() -> None:
    class MLModelSchemaValidationException(Exception):  # ml_base's name; matched by name, as hostd does
        pass

    async def rejects(rows: list[Any]) -> list[Any]:
        raise MLModelSchemaValidationException("sepal_length must be positive")

    (outcome,) = await kernel.execute(rejects, units({"x": 1}), model="m")
    assert isinstance(outcome, InvalidInput)
    assert outcome.message == "model 'm' rejected the input: sepal_length must be positive"


async def test_units_not_answered_by_the_deadline_time_out_and_the_answered_ones_keep_their_outputs() -> None:
    async def slow_when_failing(rows: list[EchoInput]) -> list[Any]:
        if any(row.fail for row in rows):
            if len(rows) == 1:
                await asyncio.sleep(30)  # the bad row alone never returns
            raise RuntimeError("one of these")
        return [EchoOutput(y=row.x) for row in rows]

    loop = asyncio.get_running_loop()
    outcomes = await kernel.execute(slow_when_failing, units({"x": 1}, {"x": 2, "fail": True}), model="m",
                                    deadline=loop.time() + 0.2)
    assert ys(outcomes[0]) == [1]
    assert isinstance(outcomes[1], Timeout)


async def test_no_units_makes_no_call() -> None:
    model = Model()
    assert await kernel.execute(model, [], model="m") == []
    assert model.calls == []


# --- execute_rows ----------------------------------------------------------------------------------


async def test_execute_rows_hands_back_one_calls_outputs_as_they_are() -> None:
    model = Model()
    outcomes = await kernel.execute_rows(model, [EchoInput(x=1), EchoInput(x=2)], model="m")
    assert [y(output) for output in outcomes] == [2, 4]
    assert model.calls == [[1, 2]]


async def test_execute_rows_fails_a_bad_row_alone_found_by_splitting() -> None:
    model = Model()
    outcomes = await kernel.execute_rows(model, [EchoInput(x=i, fail=i == 5) for i in range(16)], model="m")
    assert isinstance(outcomes[5], ModelError)
    assert outcomes[5].message == "model 'm' failed: RuntimeError: asked to fail"
    assert [y(output) for i, output in enumerate(outcomes) if i != 5] == [2 * i for i in range(16) if i != 5]
    assert len(model.calls) == 1 + 2 * 4  # as execute: the whole, then halves down to the bad row


async def test_execute_rows_isolates_a_wrong_output_count_and_times_out_at_the_deadline() -> None:
    short = await kernel.execute_rows(Model(short_by=1), [EchoInput(x=1), EchoInput(x=2, text="short")], model="m")
    assert y(short[0]) == 2 and isinstance(short[1], ModelError)

    async def never(rows: list[EchoInput]) -> list[Any]:
        await asyncio.sleep(30)
        return []

    late = await kernel.execute_rows(never, [EchoInput(x=1), EchoInput(x=2)], model="m",
                                     deadline=asyncio.get_running_loop().time() + 0.1)
    assert [type(outcome) for outcome in late] == [Timeout, Timeout]


async def test_execute_rows_of_no_rows_makes_no_call() -> None:
    model = Model()
    assert await kernel.execute_rows(model, [], model="m") == []
    assert model.calls == []


# --- validate_rows / validate_all ------------------------------------------------------------------------


def test_validate_rows_maps_each_error_to_its_row_and_keeps_the_valid_rows() -> None:
    checked = kernel.validate_rows("m", EchoInput, [{"x": 1}, {"x": "a"}, {"x": 2}, {}])
    assert [item.x for item in checked if isinstance(item, EchoInput)] == [1, 2]
    bad = {index: item for index, item in enumerate(checked) if isinstance(item, InvalidInput)}
    assert list(bad) == [1, 3]
    assert [(p["field"], p["type"]) for p in bad[1].details] == [("x", "float_parsing")]
    assert [(p["field"], p["type"]) for p in bad[3].details] == [("x", "missing")]
    assert bad[3].message == "invalid input for model 'm': x: Field required"


def test_validate_rows_passes_schema_instances_through() -> None:
    row = EchoInput(x=3)
    assert kernel.validate_rows("m", EchoInput, [row]) == [row]


def test_validate_all_names_bad_rows_by_index_when_there_are_several() -> None:
    with pytest.raises(InvalidInput) as raised:
        kernel.validate_all("m", EchoInput, [{"x": 1}, {"x": 5000}])
    assert [p["field"] for p in raised.value.details] == ["1.x"]


def test_validate_all_names_a_single_rows_fields_alone() -> None:
    with pytest.raises(InvalidInput) as raised:
        kernel.validate_all("m", EchoInput, [{"x": 5000, "fail": "maybe"}])
    assert [p["field"] for p in raised.value.details] == ["x", "fail"]


def test_validate_all_refuses_no_rows() -> None:
    with pytest.raises(InvalidInput, match="no input rows for model 'm'"):
        kernel.validate_all("m", EchoInput, [])


def test_dump_output_checks_the_output_schema() -> None:
    assert kernel.dump_output("m", EchoOutput, {"y": 1}) == {"y": 1.0, "text": ""}
    with pytest.raises(ModelError, match="does not match its output schema"):
        kernel.dump_output("m", EchoOutput, {"nope": 1})


def test_dump_outputs_dumps_a_list_as_dump_output_dumps_each() -> None:
    class More(EchoOutput):  # a subclass keeps its own fields, as model_dump keeps them
        extra: int = 7

    outputs = [EchoOutput(y=1), EchoOutput(y=2, text="b"), More(y=3)]
    assert kernel.dump_outputs("m", EchoOutput, outputs) == [kernel.dump_output("m", EchoOutput, o) for o in outputs]
    assert kernel.dump_outputs("m", EchoOutput, outputs)[2] == {"y": 3.0, "text": "", "extra": 7}


def test_dump_outputs_fails_an_output_that_does_not_match_alone() -> None:
    dumped = kernel.dump_outputs("m", EchoOutput, [EchoOutput(y=1), {"nope": 1}, {"y": 3}])
    assert dumped[0] == {"y": 1.0, "text": ""} and dumped[2] == {"y": 3.0, "text": ""}
    assert isinstance(dumped[1], ModelError) and "does not match its output schema" in dumped[1].message


async def test_units_of_several_rows_and_none_get_their_own_rows_back() -> None:
    outcomes = await kernel.execute(Model(), [[EchoInput(x=1), EchoInput(x=2)], [], [EchoInput(x=3)]], model="m")
    assert [ys(outcome) for outcome in outcomes] == [[2, 4], [], [6]]
