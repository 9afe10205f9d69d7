"""What is kept of each answered request: its prediction log record (if sampled) and, while feedback is
on, the output a ground-truth label will be compared with. Both off (the default) costs a request one check."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog

from hostd.errors import Forbidden, HostdError, InvalidInput, ModelNotFound
from hostd.prediction import MAX_REQUEST_ID, Prediction, new_request_id
from hostd.predictionlog import PredictionLog, Record

if TYPE_CHECKING:
    from hostd.feedback import Feedback, Target
    from hostd.registry import Registry, ServedModel

log = structlog.get_logger("hostd.capture")


class Capture:
    def __init__(self, registry: Registry, prediction_log: PredictionLog | None = None,
                 feedback: Feedback | None = None) -> None:
        self.registry = registry
        self.prediction_log = prediction_log  # a record per sampled request (None: off)
        self.feedback = feedback  # recent predictions, for ground-truth labels (None: off)
        self._on = prediction_log is not None or feedback is not None

    def observe(self, request_id: str | None, model: str, served: ServedModel | None, transport: str,
                rows: Sequence[Any], outcome: Prediction | HostdError, started: float,
                trace_id: str | None = None) -> None:
        """Keep what is kept of a request answered with ``outcome`` (``started``: perf_counter() when it came;
        ``trace_id``: its trace, if it was traced). Never raises: the request was answered, whatever happens
        to its record."""
        if not self._on:
            return
        try:
            self._observe(request_id or new_request_id(), model, served, transport, rows, outcome, started, trace_id)
        except Exception:  # a bug here must cost the record, not the answer
            log.exception("a request's record could not be kept", model=model, transport=transport)

    def _observe(self, request_id: str, model: str, served: ServedModel | None, transport: str,
                 rows: Sequence[Any], outcome: Prediction | HostdError, started: float, trace_id: str | None) -> None:
        if self.feedback is not None and isinstance(outcome, Prediction) and served is not None:
            self.feedback.remember(request_id, outcome.model, outcome.version, served.feedback_target, outcome.outputs)
        if self.prediction_log is not None and self.prediction_log.sampled():
            elapsed = time.perf_counter() - started
            if isinstance(outcome, Prediction):
                record = Record(request_id, time.time() - elapsed, outcome.model, outcome.version, transport, rows,
                                outcome.outputs, None, elapsed, outcome.cached, trace_id)
            else:
                record = Record(request_id, time.time() - elapsed, model, served.version if served else None,
                                transport, rows, None, outcome, elapsed, None, trace_id)
            self.prediction_log.add(record)

    def mirrored(self, shadow: ServedModel, request_ids: Sequence[str | None],
                 answers: Sequence[list[dict[str, Any]] | HostdError]) -> None:
        """A shadow version answered requests too: remember its outputs, so their labels grade it as well."""
        if self.feedback is None:
            return
        for request_id, answer in zip(request_ids, answers, strict=True):
            if request_id is not None and not isinstance(answer, HostdError):
                self.feedback.remember(request_id, shadow.name, shadow.version, shadow.feedback_target, answer)

    async def label(self, model: str, request_id: Any, label: Any) -> dict[str, Any]:
        """A ground-truth ``label`` for the prediction ``request_id`` of ``model`` (see hostd.feedback)."""
        if self.feedback is None:
            raise Forbidden("feedback is off; turn it on with feedback: {} in the config")
        self.registry.get(model)  # MODEL_NOT_FOUND for a model that is not served
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
            raise InvalidInput(f"'request_id' must be the request id of a prediction (a string of 1 to "
                               f"{MAX_REQUEST_ID} characters)")
        if label is None:
            raise InvalidInput("'label' is required: the true value of the prediction's output (a list for a "
                               "request of several rows)")
        return await self.feedback.label(model, request_id, label, lambda version: self._target(model, version))

    def _target(self, model: str, version: str) -> Target | None:
        try:
            return self.registry.get(model, version).feedback_target
        except ModelNotFound:  # that version is gone: compare as the one served now does
            return self.registry.get(model).feedback_target
