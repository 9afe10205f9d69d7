"""Shadow traffic: a share of a model's requests also goes to another version, off the request's path,
and the two answers are compared, so a user can see whether the new version may replace the old.

The primary answer is sent before its mirror is even queued; the queue is bounded and a mirror that
does not fit is dropped and counted, never waited for. One task runs the mirrors, one at a time,
through the data plane's normal admission (so the shadow's own ``max_pending`` holds, and unloading
it waits for them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from hostd.errors import HostdError
from hostd.observability import Metrics

if TYPE_CHECKING:
    from hostd.registry import ServedModel
    from hostd.routing import Route

log = structlog.get_logger("hostd.shadow")
Answer = list[dict[str, Any]] | HostdError
#: How the data plane runs a mirror: the shadow model, the units of rows; one answer per unit.
RunMirror = Callable[["ServedModel", list[list[Any]]], Awaitable[list[Answer]]]
#: Told each shadow answer, with the request id of its unit (for feedback: a label grades both versions).
Mirrored = Callable[["ServedModel", Sequence[str | None], list[Answer]], None]


@dataclass(frozen=True, slots=True)
class Mirror:
    primary: ServedModel
    shadow: ServedModel
    units: list[list[Any]]
    answers: list[Answer]
    seconds: float  # the primary's latency
    request_ids: Sequence[str | None]  # one per unit


class Shadows:
    def __init__(self, metrics: Metrics, mirrored: Mirrored | None = None) -> None:
        self.metrics = metrics
        self.mirrored = mirrored
        self._queue: asyncio.Queue[Mirror] | None = None  # set while ``run`` runs

    def offer(self, route: Route[ServedModel] | None, primary: ServedModel, units: list[list[Any]],
              answers: list[Answer], seconds: float, request_ids: Sequence[str | None]) -> None:
        """Queue a mirror of this request if the model's route mirrors it; never waits."""
        if route is None or route.shadow is None:
            return
        shadow = route.mirror_to()
        if shadow is None or shadow is primary:
            return
        labels = (primary.name, primary.version, shadow.version)
        if self._queue is None or self._queue.qsize() >= route.shadow[1].max_queue:
            self.metrics.shadow_requests.labels(*labels, "dropped").inc()
            return
        self._queue.put_nowait(Mirror(primary, shadow, units, answers, seconds, request_ids))

    async def run(self, run_mirror: RunMirror) -> None:
        """Run queued mirrors until cancelled."""
        self._queue = asyncio.Queue()
        try:
            while True:
                mirror = await self._queue.get()
                await self._run_one(mirror, run_mirror)
        finally:
            self._queue = None

    async def _run_one(self, mirror: Mirror, run_mirror: RunMirror) -> None:
        labels = (mirror.primary.name, mirror.primary.version, mirror.shadow.version)
        if mirror.shadow.retired:  # unloaded or replaced since it was queued: it may be closing
            self.metrics.shadow_requests.labels(*labels, "dropped").inc()
            return
        started = time.perf_counter()
        try:
            answers = await run_mirror(mirror.shadow, mirror.units)
        except HostdError as exc:  # overloaded, timed out, no longer served
            self.metrics.shadow_requests.labels(*labels, "failed").inc()
            log.debug("shadow failed", model=labels[0], shadow=labels[2], code=exc.code.value)
            return
        self.metrics.shadow_latency.labels(*labels).observe(time.perf_counter() - started - mirror.seconds)
        if self.mirrored is not None:
            self.mirrored(mirror.shadow, mirror.request_ids, answers)
        failed = any(isinstance(answer, HostdError) for answer in answers)
        self.metrics.shadow_requests.labels(*labels, "failed" if failed else "compared").inc()
        for primary, shadow in zip(mirror.answers, answers, strict=True):
            if isinstance(primary, HostdError) or isinstance(shadow, HostdError):
                continue
            for first, second in zip(primary, shadow, strict=True):
                self._compare(labels, first, second)

    def _compare(self, labels: tuple[str, str, str], primary: dict[str, Any], shadow: dict[str, Any]) -> None:
        """A row agrees when every output that is not a float is equal (a class, a label); floats
        (a regression, a probability) are measured as absolute differences instead."""
        categorical = []
        for key in primary.keys() | shadow.keys():
            first, second = primary.get(key), shadow.get(key)
            if isinstance(first, float) and isinstance(second, float):  # an int is a class (digits' 0-9)
                self.metrics.shadow_difference.labels(*labels).observe(abs(first - second))
            else:
                categorical.append(first == second)
        if categorical:
            self.metrics.shadow_rows.labels(*labels, "agree" if all(categorical) else "disagree").inc()
