"""Log lines that a client can cause by the thousand, at most one per kind per interval.

A client that floods an overloaded model, or sends the same bad request in a loop, would otherwise
write a warning per request: 25,862 lines in 15 s in an adversarial run, and the logging alone halved
throughput. The first line of each kind is written at once; further ones within ``interval_s`` are only
counted, and the next line of that kind after the interval says how many were left out
(``repeated``). The metrics still count every request.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import Any


class RateLimitedLog:
    def __init__(self, logger: Any, interval_s: float = 10.0) -> None:
        self._log = logger
        self.interval_s = interval_s
        self._kinds: dict[Hashable, list[float]] = {}  # kind -> [window start, lines left out]

    def warning(self, kind: Hashable, event: str, **fields: Any) -> None:
        self._emit(self._log.warning, kind, event, fields)

    def error(self, kind: Hashable, event: str, **fields: Any) -> None:
        self._emit(self._log.error, kind, event, fields)

    def _emit(self, write: Any, kind: Hashable, event: str, fields: dict[str, Any]) -> None:
        now = time.monotonic()
        window = self._kinds.get(kind)
        if window is not None and now - window[0] < self.interval_s:
            window[1] += 1
            return
        if window is not None and window[1]:
            fields["repeated"] = int(window[1])  # lines like this left out in the last interval
        self._kinds[kind] = [now, 0]
        write(event, **fields)
