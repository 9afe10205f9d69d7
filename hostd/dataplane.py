"""The one path every transport and engine calls: admit, validate, execute, check the output."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from hostd import kernel, tracing
from hostd.auth import Guard
from hostd.cache import PredictionCache, make_cache
from hostd.capture import Capture
from hostd.clients import Client, overloaded
from hostd.errors import (
    ErrorCode,
    Forbidden,
    HostdError,
    InvalidInput,
    ModelError,
    ModelNotFound,
    NotReady,
    Timeout,
)
from hostd.observability import Metrics
from hostd.prediction import MAX_REQUEST_ID, Prediction, new_request_id
from hostd.ratelimitedlog import RateLimitedLog
from hostd.registry import Registry, ServedModel
from hostd.shadow import Shadows
from hostd.tasks import InFlight, off_loop_if

if TYPE_CHECKING:
    from hostd.repository import ModelRepository

log = structlog.get_logger("hostd.dataplane")
T = TypeVar("T")


EACH_CHUNK = 64  # rows per model call in predict_each
DEADLINE_SLACK_S = 0.05  # see _call: how early a client's cancel for its deadline may arrive
# Validating or dumping costs ~5-8 µs a row on the event loop: a request bigger than this does it in a
# thread, so one 65,000-row request (1 MB of JSON) cannot stall every other client for half a second.
OFF_LOOP_ROWS = 512
__all__ = ["MAX_REQUEST_ID", "DataPlane", "Prediction", "State", "new_request_id"]


class State(str, Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


class DataPlane:
    def __init__(self, registry: Registry, metrics: Metrics | None = None,
                 repository: ModelRepository | None = None, guard: Guard | None = None, *,
                 capture: Capture | None = None) -> None:
        self.registry = registry
        # Who may do what: transports call guard.check() with the credential they carry.
        self.guard = guard or Guard()
        self.metrics = metrics or Metrics()
        self.state = State.STARTING
        # What can be loaded and unloaded at run time; None where the model set is fixed (Lambda).
        self.repository = repository
        self.shadows = Shadows(self.metrics, lambda served, ids, answers: self.capture.mirrored(served, ids, answers))
        # What is kept of each answered request: the prediction log's record, feedback's memory.
        self.capture = capture or Capture(registry)
        self._in_flight = InFlight()
        self._started: asyncio.Event | None = None  # made only when a transport waits for the start
        self._failures = RateLimitedLog(log)  # clients cause these: a line per kind per interval, not per request
        self.models_changed()

    def models_changed(self) -> None:
        """The registry or the settings changed (the repository calls this after a change)."""
        self.metrics.models_loaded.set(len(self.registry))
        for served in self.registry:
            self._cache_of(served)
            if served.batcher is not None:
                served.batcher.observe_rows = self.metrics.batch(served.name).observe
        settings = self.repository.settings if self.repository is not None else None
        if settings is not None and (settings.auth, settings.rate_limit) != (self.guard.settings, self.guard.limit):
            self.guard = Guard.of(settings)  # keys rotated by a reload apply at once

    async def run_shadows(self) -> None:
        """Run mirrored requests until cancelled (the daemon owns this task)."""
        await self.shadows.run(self._run_mirror)

    async def _run_mirror(self, served: ServedModel, units: list[list[Any]]) -> list[list[dict[str, Any]] | HostdError]:
        schema = served.model.input_schema
        if any(type(row) is not schema for unit in units for row in unit):  # the shadow's schema is its own
            units = [kernel.validate_all(served.name, schema, [row.model_dump() for row in unit]) for unit in units]
        return await self._run(served, units, served.settings.timeout_ms / 1000, None)

    def admin(self) -> ModelRepository:
        """The repository, for a call that changes what is served; FORBIDDEN unless admin is enabled."""
        if self.repository is None:
            raise Forbidden("models cannot be loaded or unloaded here: the model set is fixed")
        if not self.repository.settings.admin.enabled:
            raise Forbidden("admin calls are off; enable them with admin: {enabled: true} in the config")
        return self.repository

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model the repository knows, each version with its state and reason."""
        if self.repository is None:
            return [{"name": m.name, "version": m.version, "state": "READY", "reason": ""} for m in self.models()]
        return self.repository.index(ready_only)

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def set_ready(self) -> None:
        self.state = State.READY
        if self._started is not None:
            self._started.set()

    def start_draining(self) -> None:
        self.state = State.DRAINING
        if self._started is not None:
            self._started.set()

    async def until_started(self) -> None:
        """Return once hostd has finished starting (ready, or already draining). A transport that pulls
        its work (arq) can take a job before the other transports are up; it waits here instead of
        failing the job with NOT_READY."""
        while self.state is State.STARTING:
            if self._started is None:
                self._started = asyncio.Event()
            await self._started.wait()

    async def wait_idle(self) -> None:
        """Return once every admitted request has been answered (after ``start_draining``, none
        is admitted any more)."""
        await self._in_flight.wait_idle()

    def models(self) -> list[ServedModel]:
        return list(self.registry)

    def model(self, name: str, version: str | None = None) -> ServedModel:
        return self.registry.get(name, version)

    async def predict(self, model: str, data: Any, version: str | None = None, *, transport: str = "inproc",
                      deadline_s: float | None = None, client: Client | None = None, request_id: str | None = None,
                      use_cache: bool = True) -> Prediction:
        """Predict one input (a dict, or an instance of the model's input schema)."""
        return await self.predict_many(model, [data], version, transport=transport, deadline_s=deadline_s,
                                       client=client, request_id=request_id, use_cache=use_cache)

    async def predict_many(self, model: str, rows: Sequence[Any], version: str | None = None, *,
                           transport: str = "inproc", deadline_s: float | None = None,
                           client: Client | None = None, request_id: str | None = None,
                           use_cache: bool = True) -> Prediction:
        """Predict many rows in one call to the model; any invalid row fails the whole request.
        ``request_id`` names it in the prediction log and for feedback; ``use_cache=False`` skips
        the model's cache (the client asked for a fresh answer)."""
        started = time.perf_counter()
        served: ServedModel | None = None
        try:
            self._check_ready()
            served = self._servable(model, version)
            tracing.annotate(**{"hostd.model": served.name, "hostd.request_id": request_id})
            with tracing.step("hostd.validate", **{"hostd.rows": len(rows)}):
                inputs = await off_loop_if(len(rows) >= OFF_LOOP_ROWS, kernel.validate_all, served.name,
                                           served.model.input_schema, rows)
        except HostdError as exc:
            self._refused(model, transport, exc, started)
            self.capture.observe(request_id, model, served, transport, rows, exc, started, tracing.trace_id())
            raise
        timeout = served.settings.timeout_ms / 1000
        if deadline_s is not None:
            timeout = min(timeout, max(deadline_s, 0.0))
        try:
            (outcome,), served, (cached,) = await self._call(served, [inputs], transport, timeout, started, client,
                                                             version, use_cache, [request_id])
            if isinstance(outcome, HostdError):
                raise outcome
        except HostdError as exc:
            self.capture.observe(request_id, model, served, transport, rows, exc, started, tracing.trace_id())
            raise
        result = Prediction(served.name, served.version, outcome, request_id, cached)
        tracing.annotate(**{"hostd.version": served.version})
        self.capture.observe(request_id, model, served, transport, rows, result, started, tracing.trace_id())
        return result

    async def predict_each(self, model: str, rows: Sequence[Any], version: str | None = None, *,
                           transport: str = "inproc", client: Client | None = None,
                           request_ids: Sequence[str | None] | None = None,
                           use_cache: bool = True) -> list[Prediction | HostdError]:
        """Predict many independent rows (stream messages): each row gets its own outcome. Valid
        rows go to the model in chunks of ``EACH_CHUNK``, each row with its own ``timeout_ms``
        budget (a chunk may take ``timeout_ms`` x its rows); a row that makes the model fail, fails
        alone. ``request_ids`` (one per row) and ``use_cache`` as for ``predict_many``."""
        started = time.perf_counter()
        ids = request_ids if request_ids is not None else [None] * len(rows)
        traces = tracing.trace_ids(len(rows))  # each message's own, when the transport traced each (fan_out)
        spans = tracing.parents()
        try:
            self._check_ready()
            served = self._servable(model, version)
        except HostdError as exc:
            for index, row in enumerate(rows):
                self._refused(model, transport, exc, started)
                self.capture.observe(ids[index], model, None, transport, [row], exc, started, traces[index])
            return [exc] * len(rows)
        outcomes: list[Prediction | HostdError] = []
        with tracing.step("hostd.validate", **{"hostd.rows": len(rows)}):
            checked = kernel.validate_rows(served.name, served.model.input_schema, rows)
        for start in range(0, len(checked), EACH_CHUNK):
            chunk = range(start, min(start + EACH_CHUNK, len(checked)))
            valid = [index for index in chunk if not isinstance(checked[index], InvalidInput)]
            for index in chunk:
                if isinstance(checked[index], InvalidInput):
                    self._refused(served.name, transport, checked[index], started)
            with tracing.fan_out([spans[index] for index in valid] if len(spans) == len(rows) else spans):
                answered, by, cached = await self._call(
                    served, [[checked[index]] for index in valid], transport,
                    served.settings.timeout_ms / 1000 * len(valid), time.perf_counter(), client, version,
                    use_cache, [ids[index] for index in valid]) if valid else ([], served, [])
            answers = iter(zip(answered, cached, strict=True))
            for index in chunk:
                outcome: Prediction | HostdError = checked[index]
                if not isinstance(outcome, InvalidInput):
                    answer, from_cache = next(answers)
                    outcome = answer if isinstance(answer, HostdError) \
                        else Prediction(by.name, by.version, answer, ids[index], from_cache)
                self.capture.observe(ids[index], model, by, transport, [rows[index]], outcome, started, traces[index])
                outcomes.append(outcome)
        return outcomes

    async def _call(self, served: ServedModel, units: list[list[Any]], transport: str, timeout: float,
                    started: float, client: Client | None, requested: str | None, use_cache: bool,
                    request_ids: Sequence[str | None],
                    ) -> tuple[list[list[dict[str, Any]] | HostdError], ServedModel, list[bool | None]]:
        """Admit ``units`` of validated rows, run them (through the cache, then the batcher, where the
        model has them) within ``timeout``, dump each unit's outputs, count and log each outcome; the
        answers, the version that gave them, and whether each came from the cache."""
        self._in_flight.enter()
        codes: list[str] = ["CANCELLED"] * len(units)
        try:
            if served.retired:  # replaced or unloaded while the request was read and validated
                served = self.registry.current(served, requested)
            cache = self._cache_of(served)
            if cache is not None:
                answers, cached = await self._through_cache(cache, served, units, timeout, client, use_cache)
            else:
                answers = await self._run(served, units, timeout, client)
                cached = [None] * len(units)
            codes = ["OK" if not isinstance(answer, HostdError) else answer.code.value for answer in answers]
            for answer in answers:
                if isinstance(answer, HostdError):
                    self._log_failure(served.name, transport, answer)
            log.debug("predicted", model=served.name, transport=transport, units=len(units),
                      ms=round((time.perf_counter() - started) * 1000, 3))
            if requested is None:
                self.shadows.offer(self.registry.route(served.name), served, units, answers,
                                   time.perf_counter() - started, request_ids)
            return answers, served, cached
        except HostdError as exc:  # the whole call: overloaded, timed out
            codes = [exc.code.value] * len(units)
            self._log_failure(served.name, transport, exc)
            raise
        except asyncio.CancelledError:
            # The transport gave up: its client's deadline passed (gRPC cancels the handler) or it left.
            # The client's clock started when it sent, ours when we read the request, so its cancel
            # for the deadline arrives a little before our timer would fire: within DEADLINE_SLACK_S
            # of it, the cancel is the deadline.
            late = time.perf_counter() - started >= timeout - DEADLINE_SLACK_S
            code = "TIMEOUT" if late else "CANCELLED"
            codes = [code] * len(units)
            self._failures.warning((served.name, transport, code), "prediction cancelled", model=served.name,
                                   transport=transport, code=code)
            raise
        finally:
            self._in_flight.leave()
            elapsed = time.perf_counter() - started
            for code in codes:
                self.metrics.answered(served.name, transport, code, elapsed)

    async def _run(self, served: ServedModel, units: list[list[Any]], timeout: float,
                   client: Client | None) -> list[list[dict[str, Any]] | HostdError]:
        outcomes = await self._execute(served, units, timeout, client)
        return await off_loop_if(sum(len(unit) for unit in units) >= OFF_LOOP_ROWS, kernel.dump_outcomes, served.name,
                                 served.model.output_schema, outcomes)

    async def _through_cache(self, cache: PredictionCache, served: ServedModel, units: list[list[Any]],
                             timeout: float, client: Client | None, look: bool,
                             ) -> tuple[list[list[dict[str, Any]] | HostdError], list[bool | None]]:
        """``_run`` for the rows the cache does not know (a unit all of whose rows it knows costs the model
        nothing); the answers, and whether each unit was answered by the cache alone. ``look=False``:
        every row from the model (the client asked for fresh answers), each answer then stored."""
        big = sum(len(unit) for unit in units) >= OFF_LOOP_ROWS
        with tracing.step("hostd.cache_lookup", **{"hostd.rows": sum(len(unit) for unit in units)}) as step:
            lookup = await cache.lookup(units, look=look, off_loop=big)
            if step:  # counting the hits only when someone looks
                step.set("hostd.cache.hits", lookup.hits())
        todo, origin = lookup.missing(units)
        computed = await self._run(served, todo, timeout, client) if todo else []
        answers, new = await off_loop_if(big, lookup.complete, origin, computed)
        cache.store(new)
        missed = set(origin)
        return answers, [index not in missed for index in range(len(units))]  # type: ignore[return-value]

    def _cache_of(self, served: ServedModel) -> PredictionCache | None:
        """The model's cache, made on first use (with this data plane's metrics)."""
        if served.cache is None and served.settings.cache is not None:
            served.cache = make_cache(served.settings.cache, served.name, served.version, served.model.input_schema,
                                      self.metrics, served.fingerprint)
        return served.cache

    async def label(self, model: str, request_id: Any, label: Any) -> dict[str, Any]:
        """A ground-truth ``label`` for the prediction ``request_id`` of ``model`` (see hostd.feedback)."""
        return await self.capture.label(model, request_id, label)

    async def _execute(self, served: ServedModel, units: list[list[Any]], timeout: float,
                       client: Client | None) -> list[kernel.Outcome]:
        if (refused := overloaded(served, client)) is not None:
            raise refused
        pending, rows = self.metrics.model(served.name)
        # Each unit is a request (a message of a read-ahead group, a Kafka record, an HTTP body), so
        # max_pending and a client's share count requests however they arrived. A group is admitted
        # whole when there is room at its start.
        requests = len(units)
        served.pending += requests
        if client is not None:
            client.pending[served.name] = client.pending.get(served.name, 0) + requests
        pending.set(served.pending)
        rows.observe(sum(len(unit) for unit in units))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):  # asyncio's, not anyio's: this runs per request
                if served.batcher is not None:
                    return await served.batcher(units, deadline)
                rows_in_call = sum(len(unit) for unit in units)
                self.metrics.batch(served.name).observe(rows_in_call)
                with tracing.step("hostd.model", **{"hostd.model": served.name, "hostd.version": served.version,
                                                    "hostd.batch.rows": rows_in_call, "hostd.batch.requests": 1}):
                    return await kernel.execute(served.run_batch, units, model=served.name)
        except TimeoutError:
            raise Timeout(f"model '{served.name}' did not answer within {round(timeout * 1000)} ms") from None
        finally:
            served.pending -= requests
            pending.set(served.pending)
            if client is not None:
                client.pending[served.name] -= requests

    def refusal(self, model: str, version: str | None = None, *, transport: str,
                client: Client | None = None, request_id: str | None = None) -> HostdError | None:
        """The error a prediction for ``model`` would be refused with now (not ready, no such model,
        overloaded), counted and logged as a refusal (and in the prediction log, with no inputs: they
        were never read); None if it would be admitted. No parsing: a transport asks before it reads or
        decodes a request body, so refusing costs next to nothing."""
        started = time.perf_counter()
        served: ServedModel | None = None
        refused: HostdError | None
        try:
            self._check_ready()
            served = self._servable(model, version)
            refused = overloaded(served, client)
        except HostdError as exc:
            refused = exc
        if refused is not None:
            self._refused(served.name if served else model, transport, refused, started)
            self.capture.observe(request_id, model, served, transport, (), refused, started, tracing.trace_id())
        return refused

    @contextlib.contextmanager
    def refusing(self, transport: str, model: str | None = None) -> Iterator[None]:
        """Count and log a HostdError raised in the block as a request refused before it reached the data
        plane (a body that is not JSON, tensors that do not decode), as the data plane's own refusals are."""
        started = time.perf_counter()
        try:
            yield
        except HostdError as exc:
            self.rejected(transport, exc, model, started)
            raise

    def rejected(self, transport: str, exc: HostdError, model: Any = None, started: float | None = None) -> None:
        """Count and log a request a transport refused before it reached the data plane (``model``: the name
        it gave, if any; one not served is counted as <unknown>, since the client chose it)."""
        label = model if isinstance(model, str) and model in self.registry.names() else "<unknown>"
        self._refused(label, transport, exc, started if started is not None else time.perf_counter())

    def _servable(self, name: str, version: str | None) -> ServedModel:
        served = self.registry.get(name, version)
        if not served.settings.create_endpoint:
            raise ModelNotFound(f"model '{name}' is loaded but not served (create_endpoint: false)")
        return served

    def _check_ready(self) -> None:
        if self.state is not State.READY:
            raise NotReady(f"hostd is {self.state.value}; not accepting predictions")

    def _refused(self, model: str, transport: str, exc: HostdError, started: float) -> None:
        """Count and log a request answered before it reached the model."""
        # The name of a model that is not served came from the client: not a label (unbounded).
        label = model if exc.code is not ErrorCode.MODEL_NOT_FOUND and exc.code is not ErrorCode.NOT_READY \
            else "<unknown>"
        self._log_failure(label, transport, exc)
        self.metrics.answered(label, transport, exc.code.value, time.perf_counter() - started)

    def _log_failure(self, model: str, transport: str, exc: HostdError) -> None:
        kind = (model, transport, exc.code)
        self._failures.warning(kind, "prediction failed", model=model, transport=transport, code=exc.code.value,
                               error=exc.message)
        if isinstance(exc, ModelError) and exc.__cause__ is not None:
            self._failures.error((*kind, "raised"), "model raised", model=model, exc_info=exc.__cause__)
