"""hostd.ratelimitedlog: a line per kind per interval, and how many were left out."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from hostd.ratelimitedlog import RateLimitedLog


def test_the_first_line_of_a_kind_is_written_and_the_rest_of_the_interval_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("hostd.ratelimitedlog.time.monotonic", lambda: clock[0])
    log = RateLimitedLog(structlog.get_logger("test"), interval_s=10)
    with capture_logs() as lines:
        for _ in range(5):
            log.warning("a", "refused", code="OVERLOADED")
        log.warning("b", "refused", code="NOT_READY")  # another kind: its own first line
        clock[0] += 10
        log.warning("a", "refused", code="OVERLOADED")
        log.warning("a", "refused", code="OVERLOADED")
        clock[0] += 10
        log.error("a", "refused", code="OVERLOADED")
    assert [(line["code"], line.get("repeated"), line["log_level"]) for line in lines] == [
        ("OVERLOADED", None, "warning"),
        ("NOT_READY", None, "warning"),
        ("OVERLOADED", 4, "warning"),  # the 4 left out in the first interval
        ("OVERLOADED", 1, "error"),
    ]
