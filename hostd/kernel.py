"""The one execution kernel: the only place that runs rows through a model.

Serving (the micro-batcher, or one call when batching is off), the data plane's per-row path for
streams (``predict_each``) and ``hostd batch``'s ``Scorer`` all come here. It works on *units*: a
unit is a list of rows that succeeds or fails together (one request of ``predict_many``, one
message of a stream, one row of a batch file).

- ``validate_rows`` validates every row in one pydantic-core call and maps each error back to its row.
- ``execute`` makes one ``predict_batch`` call for all the units' rows; if the call raises (or returns
  the wrong number of outputs) it splits the units in halves and tries each half, so a bad unit among
  n costs about 2·log2(n) calls instead of n; every unit ends with its outputs or its error, within
  the caller's deadline. ``execute_rows`` is the same with a unit per row.
- ``dump_output`` / ``dump_outputs`` check outputs against the model's output schema and make them
  JSON-ready (``dump_outputs`` in one pydantic-core call for a whole list).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from hostd.errors import HostdError, InvalidInput, ModelError, Timeout

#: One predict_batch call: rows in, one output per row out (in a thread, a process, or inline).
Run = Callable[[list[Any]], Awaitable[list[Any]]]
#: What a unit ends with: its outputs, or why it has none.
Outcome = list[Any] | HostdError


async def execute(run: Run, units: Sequence[list[Any]], *, model: str,
                  deadline: float | None = None) -> list[Outcome]:
    """Run ``units`` through ``run``, one outcome per unit, in order. ``deadline`` is an absolute
    time on the event loop's clock (``loop.time()``); a unit not answered by then is a Timeout."""
    outcomes: list[Outcome | None] = [None] * len(units)
    if units:
        await _execute(run, list(units), list(range(len(units))), outcomes, model, deadline)
    return outcomes  # type: ignore[return-value]  # every slot is filled


async def execute_rows(run: Run, rows: list[Any], *, model: str,
                       deadline: float | None = None) -> list[Any | HostdError]:
    """``execute`` with every row a unit of its own, each outcome the row's output itself or its
    error. When the one call succeeds (nearly always) its outputs come back as they are, with no
    work per row: ``hostd batch`` calls this for every chunk of a file."""
    if not rows:
        return []
    outputs = await _call(run, rows, model, deadline)
    if not isinstance(outputs, Exception):
        return outputs
    outcomes: list[Outcome | None] = [None] * len(rows)
    await _failed(run, [[row] for row in rows], list(range(len(rows))), outcomes, model, deadline, outputs)
    return [outcome if isinstance(outcome, HostdError) else outcome[0] for outcome in outcomes]  # type: ignore[index]


async def _execute(run: Run, units: list[list[Any]], positions: list[int], outcomes: list[Outcome | None],
                   model: str, deadline: float | None) -> None:
    rows = [row for unit in units for row in unit]
    outputs = await _call(run, rows, model, deadline)
    if isinstance(outputs, Exception):
        await _failed(run, units, positions, outcomes, model, deadline, outputs)
    elif len(rows) == len(units) and all(len(unit) == 1 for unit in units):  # a row per unit: no slicing
        for position, output in zip(positions, outputs, strict=True):
            outcomes[position] = [output]
    else:
        offset = 0
        for position, unit in zip(positions, units, strict=True):
            outcomes[position] = outputs[offset:offset + len(unit)]
            offset += len(unit)


async def _call(run: Run, rows: list[Any], model: str, deadline: float | None) -> list[Any] | Exception:
    """One predict_batch call: an output per row, or what went wrong."""
    try:
        async with asyncio.timeout_at(deadline):  # asyncio's, not anyio's: this runs per request
            outputs = await run(rows)
        if len(outputs) != len(rows):
            raise ModelError(f"model '{model}' returned {len(outputs)} outputs for {len(rows)} inputs")
    except Exception as exc:
        return exc
    return outputs if isinstance(outputs, list) else list(outputs)


async def _failed(run: Run, units: list[list[Any]], positions: list[int], outcomes: list[Outcome | None],
                  model: str, deadline: float | None, exc: Exception) -> None:
    if isinstance(exc, TimeoutError):
        error: HostdError = Timeout(f"model '{model}' did not answer before the deadline")
        for position in positions:
            outcomes[position] = error
    elif len(units) > 1:  # some unit made the model fail: find it, spare the others
        half = len(units) // 2
        await _execute(run, units[:half], positions[:half], outcomes, model, deadline)
        await _execute(run, units[half:], positions[half:], outcomes, model, deadline)
    else:
        outcomes[positions[0]] = exc if isinstance(exc, HostdError) else model_failure(model, exc)


def model_failure(model: str, exc: Exception) -> HostdError:
    """What a model's exception means to the caller: its own input check (ml_base's
    MLModelSchemaValidationException) is INVALID_INPUT, anything else MODEL_ERROR."""
    if any(cls.__name__ == "MLModelSchemaValidationException" for cls in type(exc).__mro__):
        return InvalidInput(f"model '{model}' rejected the input: {exc}")
    error = ModelError(f"model '{model}' failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc  # for the log's traceback
    return error


def validate_rows(model: str, schema: type[BaseModel], rows: Sequence[Any]) -> list[Any | InvalidInput]:
    """Each row as an instance of ``schema`` (instances pass as they are) or the InvalidInput that
    says why not. One pydantic-core call for the whole list (~6x faster than a call per row), and
    a second one for the valid rows only if some row was invalid."""
    adapter = rows_adapter(schema)
    try:
        return adapter.validate_python(rows)  # type: ignore[no-any-return]
    except ValidationError as exc:
        problems: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for error in exc.errors(include_url=False):
            problems[int(error["loc"][0])].append(_problem(error["loc"][1:], error))
    valid = [index for index in range(len(rows)) if index not in problems]
    checked = iter(adapter.validate_python([rows[index] for index in valid]) if valid else [])
    return [_invalid(model, problems[index]) if index in problems else next(checked) for index in range(len(rows))]


def validate_all(model: str, schema: type[BaseModel], rows: Sequence[Any]) -> list[Any]:
    """Every row validated, or one InvalidInput for them all (fields located ``row.field``
    when there are several rows)."""
    if not rows:
        raise InvalidInput(f"no input rows for model '{model}'")
    checked = validate_rows(model, schema, rows)
    failed = [(index, item) for index, item in enumerate(checked) if isinstance(item, InvalidInput)]
    if not failed:
        return checked
    if len(rows) == 1:
        raise failed[0][1]
    problems = [{**problem, "field": ".".join(filter(None, (str(index), problem["field"])))}
                for index, error in failed for problem in error.details]
    raise _invalid(model, problems)


def _invalid(model: str, problems: list[dict[str, Any]]) -> InvalidInput:
    summary = "; ".join(f"{p['field'] or 'input'}: {p['message']}" for p in problems[:5])
    return InvalidInput(f"invalid input for model '{model}': {summary}", problems)


@functools.cache
def rows_adapter(schema: type[BaseModel]) -> TypeAdapter[list[Any]]:
    return TypeAdapter(list[schema])  # type: ignore[valid-type]


def _problem(loc: Sequence[Any], error: Any) -> dict[str, Any]:
    return {"field": ".".join(str(part) for part in loc), "message": error["msg"], "type": error["type"]}


def dump_output(model: str, schema: type[BaseModel], output: Any) -> dict[str, Any]:
    """One output as JSON-ready data, checked against the model's output schema."""
    try:
        if not isinstance(output, schema):
            output = schema.model_validate(output)
        return output.model_dump(mode="json", by_alias=True)
    except ValidationError as exc:
        raise ModelError(f"model '{model}' returned output that does not match its output schema: "
                         f"{exc.errors(include_url=False)[0]['msg']}") from None


def dump_outcomes(model: str, schema: type[BaseModel],
                  outcomes: list[Outcome]) -> list[list[dict[str, Any]] | HostdError]:
    """Each unit's outputs as ``dump_output`` gives them, or its error (the unit's own, or the ModelError
    of an output that does not match ``schema``)."""
    return [outcome if isinstance(outcome, HostdError) else _dump_unit(model, schema, outcome) for outcome in outcomes]


def _dump_unit(model: str, schema: type[BaseModel], outputs: list[Any]) -> list[dict[str, Any]] | HostdError:
    try:
        return [dump_output(model, schema, output) for output in outputs]
    except ModelError as exc:
        return exc


def dump_outputs(model: str, schema: type[BaseModel], outputs: list[Any]) -> list[dict[str, Any] | ModelError]:
    """Each output as ``dump_output`` gives it, or the ModelError that says why not. Outputs that
    are all instances of ``schema`` itself (what a model returns) are dumped in one pydantic-core
    call, ~4x faster than a call per output; anything else goes output by output."""
    if all(type(output) is schema for output in outputs):  # a subclass would dump as the base here
        with contextlib.suppress(Exception):  # then the path below finds the output (or raises as before)
            return rows_adapter(schema).dump_python(outputs, mode="json", by_alias=True)  # type: ignore[no-any-return]
    return [_dump_or_error(model, schema, output) for output in outputs]


def _dump_or_error(model: str, schema: type[BaseModel], output: Any) -> dict[str, Any] | ModelError:
    try:
        return dump_output(model, schema, output)
    except ModelError as exc:
        return exc
