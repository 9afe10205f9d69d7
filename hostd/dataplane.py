"""The one path every transport and engine calls: admit, validate, execute, check the output."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import anyio
import structlog
from pydantic import BaseModel, TypeAdapter, ValidationError

from hostd.errors import HostdError, InvalidInput, ModelError, ModelNotFound, NotReady, Overloaded, Timeout
from hostd.observability import Metrics
from hostd.registry import Registry, ServedModel

log = structlog.get_logger("hostd.dataplane")


EACH_CHUNK = 64  # rows per model call in predict_each


class State(str, Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class Prediction:
    model: str
    version: str
    outputs: list[dict[str, Any]]  # one JSON-ready dict per input row

    @property
    def output(self) -> dict[str, Any]:
        return self.outputs[0]


class DataPlane:
    def __init__(self, registry: Registry, metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.state = State.STARTING
        self._in_flight = 0
        self._idle = anyio.Event()
        self.metrics.models_loaded.set(len(registry))

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def set_ready(self) -> None:
        self.state = State.READY

    def start_draining(self) -> None:
        self.state = State.DRAINING
        if not self._in_flight:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once draining and every admitted request has been answered."""
        await self._idle.wait()

    def models(self) -> list[ServedModel]:
        return list(self.registry)

    def model(self, name: str, version: str | None = None) -> ServedModel:
        return self.registry.get(name, version)

    async def predict(self, model: str, data: Any, version: str | None = None, *, transport: str = "inproc",
                      deadline_s: float | None = None) -> Prediction:
        """Predict one input (a dict, or an instance of the model's input schema)."""
        return await self.predict_many(model, [data], version, transport=transport, deadline_s=deadline_s)

    async def predict_many(self, model: str, rows: Sequence[Any], version: str | None = None, *,
                           transport: str = "inproc", deadline_s: float | None = None,
                           timeout_s: float | None = None) -> Prediction:
        """Predict many rows in one call to the model; any invalid row fails the whole request.
        ``timeout_s`` replaces the model's ``timeout_ms`` for this call."""
        started = time.perf_counter()
        label, code, admitted = "<unknown>", "OK", False
        try:
            self._admit()
            admitted = True
            served = self._servable(model, version)
            label = served.name
            inputs = validate_inputs(served, rows)
            outputs = await self._execute(served, inputs, deadline_s, timeout_s)
            result = Prediction(served.name, served.version, [dump_output(served, out) for out in outputs])
            log.debug("predicted", model=served.name, transport=transport, rows=len(rows),
                      ms=round((time.perf_counter() - started) * 1000, 3))
            return result
        except HostdError as exc:
            code = exc.code.value
            log.warning("prediction failed", model=model, transport=transport, code=code, error=exc.message)
            raise
        except asyncio.CancelledError:
            # The transport gave up: its client's deadline passed (gRPC cancels the handler) or it left.
            elapsed = time.perf_counter() - started
            code = "TIMEOUT" if deadline_s is not None and elapsed >= deadline_s else "CANCELLED"
            log.warning("prediction cancelled", model=model, transport=transport, code=code)
            raise
        finally:
            if admitted:
                self._release()
            self.metrics.answered(label, transport, code, time.perf_counter() - started)

    async def predict_each(self, model: str, rows: Sequence[Any], version: str | None = None, *,
                           transport: str = "inproc") -> list[Prediction | HostdError]:
        """Predict many independent rows (stream messages, batch-file rows): each row gets its own
        outcome. Valid rows go to the model in chunks of ``EACH_CHUNK`` (each row keeps its own
        ``timeout_ms`` budget); a chunk whose model call raises is retried row by row, so one bad
        row fails alone."""
        outcomes: list[Prediction | HostdError | None] = [None] * len(rows)
        try:
            served = self._servable(model, version)
        except HostdError as exc:
            self.metrics.requests.labels("<unknown>", transport, exc.code.value).inc(len(rows))
            return [exc] * len(rows)
        valid: list[tuple[int, Any]] = []  # validated once here; predict_many takes schema instances as is
        for index, row in enumerate(rows):
            try:
                valid.append((index, validate_inputs(served, [row])[0]))
            except HostdError as exc:
                outcomes[index] = exc
                self.metrics.requests.labels(served.name, transport, exc.code.value).inc()
        for start in range(0, len(valid), EACH_CHUNK):
            chunk = valid[start:start + EACH_CHUNK]
            for index, outcome in zip([i for i, _ in chunk], await self._chunk(served, chunk, transport),
                                      strict=True):
                outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    async def _chunk(self, served: ServedModel, chunk: list[tuple[int, Any]],
                     transport: str) -> list[Prediction | HostdError]:
        inputs = [item for _, item in chunk]
        budget = served.settings.timeout_ms / 1000 * len(inputs)
        try:
            batch = await self.predict_many(served.name, inputs, served.version, transport=transport,
                                            timeout_s=budget)
            return [Prediction(batch.model, batch.version, [output]) for output in batch.outputs]
        except ModelError as exc:
            if len(inputs) == 1:
                return [exc]
        except HostdError as exc:
            return [exc] * len(inputs)
        return [await self._one(served, item, transport) for item in inputs]  # find the row that fails

    async def _one(self, served: ServedModel, item: Any, transport: str) -> Prediction | HostdError:
        try:
            return await self.predict_many(served.name, [item], served.version, transport=transport)
        except HostdError as exc:
            return exc

    def _servable(self, name: str, version: str | None) -> ServedModel:
        served = self.registry.get(name, version)
        if not served.settings.create_endpoint:
            raise ModelNotFound(f"model '{name}' is loaded but not served (create_endpoint: false)")
        return served

    async def _execute(self, served: ServedModel, inputs: list[Any], deadline_s: float | None,
                       timeout_s: float | None = None) -> list[Any]:
        if served.pending >= served.settings.max_pending:
            raise Overloaded(f"model '{served.name}' has {served.pending} requests pending "
                             f"(max_pending: {served.settings.max_pending}); retry later")
        timeout = timeout_s if timeout_s is not None else served.settings.timeout_ms / 1000
        if deadline_s is not None:
            timeout = min(timeout, max(deadline_s, 0.0))
        pending, rows = self.metrics.model(served.name)
        served.pending += 1
        pending.set(served.pending)
        rows.observe(len(inputs))
        try:
            async with asyncio.timeout(timeout):  # asyncio's, not anyio's: this runs per request
                outputs = await _run(served, inputs)
        except TimeoutError:
            raise Timeout(f"model '{served.name}' did not answer within {round(timeout * 1000)} ms") from None
        except HostdError:
            raise
        except Exception as exc:
            error = model_failure(served, exc)
            if isinstance(error, ModelError):
                log.error("model raised", model=served.name, exc_info=exc)
            raise error from exc
        finally:
            served.pending -= 1
            pending.set(served.pending)
        if len(outputs) != len(inputs):
            raise ModelError(f"model '{served.name}' returned {len(outputs)} outputs for {len(inputs)} inputs")
        return outputs

    def _admit(self) -> None:
        if self.state is not State.READY:
            raise NotReady(f"hostd is {self.state.value}; not accepting predictions")
        self._in_flight += 1

    def _release(self) -> None:
        self._in_flight -= 1
        if self.state is State.DRAINING and not self._in_flight:
            self._idle.set()


async def _run(served: ServedModel, inputs: list[Any]) -> list[Any]:
    if served.is_async:
        return [await served.model.predict(item) for item in inputs]
    if served.batcher is not None:
        return await served.batcher(inputs)
    return await served.run_batch(inputs)


def model_failure(served: ServedModel, exc: Exception) -> HostdError:
    """What a model's exception means to the caller: its own input check (ml_base's
    MLModelSchemaValidationException) is INVALID_INPUT, anything else MODEL_ERROR."""
    if any(cls.__name__ == "MLModelSchemaValidationException" for cls in type(exc).__mro__):
        return InvalidInput(f"model '{served.name}' rejected the input: {exc}")
    return ModelError(f"model '{served.name}' failed: {type(exc).__name__}: {exc}")


def validate_inputs(served: ServedModel, rows: Sequence[Any]) -> list[Any]:
    """``rows`` as instances of the model's input schema (instances pass as they are), validated as
    one list: pydantic-core does the loop, ~6x faster than a model_validate call per row."""
    if not rows:
        raise InvalidInput(f"no input rows for model '{served.name}'")
    try:
        return _rows_adapter(served.model.input_schema).validate_python(rows)  # type: ignore[no-any-return]
    except ValidationError as exc:
        # Errors are located [row, field, ...]; a single row is named by its fields alone.
        skip = 0 if len(rows) > 1 else 1
        problems = [_problem(error["loc"][skip:], error) for error in exc.errors(include_url=False)]
    summary = "; ".join(f"{p['field'] or 'input'}: {p['message']}" for p in problems[:5])
    raise InvalidInput(f"invalid input for model '{served.name}': {summary}", problems)


@functools.cache
def _rows_adapter(schema: type[BaseModel]) -> TypeAdapter[list[Any]]:
    return TypeAdapter(list[schema])  # type: ignore[valid-type]


def _problem(loc: Sequence[Any], error: Any) -> dict[str, Any]:
    return {"field": ".".join(str(part) for part in loc), "message": error["msg"], "type": error["type"]}


def dump_output(served: ServedModel, output: Any) -> dict[str, Any]:
    schema: type[BaseModel] = served.model.output_schema
    try:
        if not isinstance(output, schema):
            output = schema.model_validate(output)
        return output.model_dump(mode="json", by_alias=True)
    except ValidationError as exc:
        raise ModelError(f"model '{served.name}' returned output that does not match its output schema: "
                         f"{exc.errors(include_url=False)[0]['msg']}") from exc
