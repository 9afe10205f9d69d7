"""Ground-truth feedback: a label joined with the prediction it is for, and live quality per model version.

The data plane remembers the last ``remember`` predictions by request id (the compared output field
only). A label finds its prediction there, or, come too late for that, in the prediction log's newest
files (file sink, JSONL). Each joined label updates its version's window of the last ``window`` labels:
accuracy for a classifier, MAE and RMSE for a regressor, exported as ``hostd_model_quality``. A label
for a request id that is unknown or forgotten is counted (``hostd_feedback{outcome="unknown"}``) and
answered as not joined: not an error, so a labeller replaying old ids causes no error storm. A second
label for a prediction (a redelivered Kafka record) is counted as ``duplicate`` and changes nothing.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import BaseModel

from hostd.errors import InvalidInput
from hostd.prediction import MAX_REQUEST_ID

if TYPE_CHECKING:
    from hostd.observability import Metrics
    from hostd.settings import FeedbackSettings, ModelFeedbackSettings

Kind = Literal["classification", "regression"]
MAX_VERSIONS = 4  # answers kept per request id: the primary's and its shadows'
#: What is remembered per prediction is bounded, so that the memory ``remember`` predictions take is
#: too, whatever clients send: at most this many rows, each a number or a text of at most MAX_TEXT.
MAX_ROWS = 1024
MAX_TEXT = 256
MAX_LABEL = 1e150  # a regression label beyond this is no measurement (and its square would overflow)
#: Finds a logged prediction by request id (the file sink's ``find``), for a label that came late.
Lookup = Callable[[str], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class Target:
    """What a label is compared with: one output field, as a class or as a number."""

    field: str
    kind: Kind


def target_of(schema: type[BaseModel], settings: ModelFeedbackSettings) -> Target | None:
    """The output field labels are compared with (``settings.field``, else the schema's first field),
    and how; None if the schema has no fields. ValueError if ``settings.field`` is not one of them."""
    fields = schema.model_fields
    name = settings.field or next(iter(fields), None)
    if name is None:
        return None
    if name not in fields:
        raise ValueError(f"feedback.field: the output has no field '{name}' (it has: {', '.join(fields)})")
    kind: Kind = settings.kind or ("regression" if fields[name].annotation is float else "classification")
    return Target(name, kind)


class Remembered(NamedTuple):
    """What a version answered a request with: the compared field's value for each row."""

    name: str
    version: str
    target: Target
    values: list[Any]


class Quality:
    """One model version's last ``window`` labelled rows. Its figures are summed afresh (math.fsum) each
    time, not kept as running sums: one extreme label would leave those wrong for good."""

    def __init__(self, kind: Kind, window: int) -> None:
        self.kind = kind
        self._scores: deque[float] = deque(maxlen=window)  # 1/0 (correct) or the error (predicted - label)

    def score(self, predicted: Any, label: Any) -> float:
        """A row's score: ValueError if the label cannot be compared with the prediction."""
        return _error(predicted, label) if self.kind == "regression" else float(_same(predicted, label))

    def add(self, scores: Sequence[float]) -> None:
        self._scores.extend(scores)

    def figures(self) -> dict[str, float]:
        count = len(self._scores)
        if not count:
            return {}
        if self.kind == "classification":
            return {"accuracy": math.fsum(self._scores) / count}
        return {"mae": math.fsum(abs(score) for score in self._scores) / count,
                "rmse": math.sqrt(math.fsum(score * score for score in self._scores) / count)}

    def __len__(self) -> int:
        return len(self._scores)


class Feedback:
    def __init__(self, settings: FeedbackSettings, metrics: Metrics, lookup: Lookup | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._lookup = lookup
        # request id -> what each version answered it with (the primary's, then any shadow's)
        self._recent: OrderedDict[str, list[Remembered]] = OrderedDict()
        self._rows = 0  # remembered, in all: ``remember`` bounds this, so big requests count for what they hold
        self._quality: dict[tuple[str, str], Quality] = {}
        self._graded: OrderedDict[str, None] = OrderedDict()  # the last ``remember`` request ids labelled

    def remember(self, request_id: str, name: str, version: str, target: Target | None,
                 outputs: Sequence[dict[str, Any]]) -> None:
        """Keep a prediction's compared field for labels to come (the oldest go, past ``remember`` rows).
        A shadow's answer to the same request joins the primary's, so one label grades both versions."""
        if target is None or len(request_id) > MAX_REQUEST_ID:  # a label could not name it anyway
            return
        values = [output.get(target.field) for output in outputs]
        if len(values) > MAX_ROWS or not all(_small(value) for value in values):
            return  # a label is compared with a class or a number: a big request or output is not kept
        kept = Remembered(name, version, target, values)
        answers = self._forget(request_id) or []
        answers = [*[entry for entry in answers if entry.version != version], kept][-MAX_VERSIONS:]
        self._recent[request_id] = answers
        self._rows += sum(len(entry.values) for entry in answers)
        while self._rows > self.settings.remember and self._recent:
            self._forget(next(iter(self._recent)))

    def _forget(self, request_id: str) -> list[Remembered] | None:
        answers = self._recent.pop(request_id, None)
        if answers is not None:
            self._rows -= sum(len(entry.values) for entry in answers)
        return answers

    async def label(self, model: str, request_id: str, label: Any, targets: Callable[[str], Target | None],
                    ) -> dict[str, Any]:
        """Join ``label`` (a list of labels for a request of several rows) with the prediction of
        ``request_id`` for ``model`` (and a shadow's, if one answered it too); ``targets(version)`` says
        what a logged prediction is compared with. A label that does not fit (a wrong model, a wrong
        number of rows, a value that cannot be compared) changes nothing: the prediction stays remembered."""
        if request_id in self._graded:  # a second label (a redelivered Kafka record): counted once only
            self.metrics.feedback.labels(model, "duplicate").inc()
            return {"request_id": request_id, "model": model, "joined": False,
                    "reason": "this prediction was labelled already; the first label counts"}
        answers = self._recent.get(request_id)
        if answers is None and self._lookup is not None:
            answers = _from_record(await self._lookup(request_id), targets)
        answers = [answer for answer in answers or [] if answer.name == model]
        if not answers:
            self.metrics.feedback.labels(model, "unknown").inc()
            return {"request_id": request_id, "model": model, "joined": False,
                    "reason": "no prediction of this model with this request id is remembered (unknown, or too old)"}
        try:
            graded = [(answer, self._scores(request_id, answer, label)) for answer in answers]
        except InvalidInput:
            self.metrics.feedback.labels(model, "invalid").inc()
            raise
        self._forget(request_id)
        for answer, scores in graded:
            quality = self._quality_of(answer)
            quality.add(scores)
            self._export(answer.name, answer.version, quality)
        self._graded[request_id] = None
        if len(self._graded) > self.settings.remember:
            self._graded.popitem(last=False)
        self.metrics.feedback.labels(model, "joined").inc()
        return {"request_id": request_id, "model": model, "version": answers[0].version, "joined": True,
                **({"shadow_versions": [answer.version for answer in answers[1:]]} if len(answers) > 1 else {})}

    def _scores(self, request_id: str, answer: Remembered, label: Any) -> list[float]:
        """Each row's score against ``label``; InvalidInput, and nothing scored, if any row's does not fit."""
        predicted = answer.values
        labels = label if isinstance(label, list) and len(predicted) > 1 else [label]
        if len(labels) != len(predicted):
            raise InvalidInput(f"request '{request_id}' had {len(predicted)} rows: give a list of {len(predicted)} "
                               "labels")
        quality = self._quality_of(answer)
        try:
            return [quality.score(value, truth) for value, truth in zip(predicted, labels, strict=True)]
        except ValueError as exc:
            raise InvalidInput(f"label for request '{request_id}': {exc}") from None

    def _quality_of(self, answer: Remembered) -> Quality:
        return self._quality.setdefault((answer.name, answer.version), Quality(answer.target.kind,
                                                                               self.settings.window))

    def _export(self, name: str, version: str, quality: Quality) -> None:
        for metric, value in quality.figures().items():
            self.metrics.quality.labels(name, version, metric).set(value)
        self.metrics.quality_labels.labels(name, version).set(len(quality))

    def quality(self) -> list[dict[str, Any]]:
        """Each labelled model version's figures, for /api/quality and ``hostd models --live``."""
        return [{"model": name, "version": version, "kind": quality.kind, "labels": len(quality),
                 **quality.figures()} for (name, version), quality in sorted(self._quality.items())]


def _from_record(record: dict[str, Any] | None, targets: Callable[[str], Target | None]) -> list[Remembered] | None:
    """A logged prediction as ``remember`` would have kept it (None: not found, failed, or not comparable)."""
    if record is None or not record.get("outputs") or record.get("version") is None:
        return None
    target = targets(record["version"])
    if target is None:
        return None
    return [Remembered(record["model"], record["version"], target,
                       [output.get(target.field) for output in record["outputs"]])]


def _same(predicted: Any, label: Any) -> bool:
    """A class as JSON writes it: 3 and 3.0 are the same, "3" is not 3 unless the output is text."""
    if _number(predicted) and _number(label):
        return bool(predicted == label)
    return str(predicted) == str(label) if isinstance(predicted, str) or isinstance(label, str) else predicted == label


def _error(predicted: Any, label: Any) -> float:
    if not _number(label) or not math.isfinite(label) or abs(label) > MAX_LABEL:
        raise ValueError(f"a regression label must be a finite number within ±{MAX_LABEL:g}, not {label!r:.40}")
    if not _number(predicted) or not math.isfinite(predicted):
        raise ValueError(f"the prediction {predicted!r} is not a finite number")
    return float(predicted) - float(label)


def _small(value: Any) -> bool:
    return value is None or isinstance(value, (int, float, bool)) or (isinstance(value, str) and len(value) <= MAX_TEXT)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
