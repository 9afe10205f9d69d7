"""hostd.observability: one log format for hostd's own lines and the libraries' (stdlib logging)."""

from __future__ import annotations

import json
import logging
import sys
import threading

import pytest
import structlog

from hostd.observability import configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    hooks = sys.excepthook, threading.excepthook, sys.unraisablehook
    yield
    root.handlers, root.level = handlers, level
    sys.excepthook, threading.excepthook, sys.unraisablehook = hooks
    logging.captureWarnings(False)
    structlog.reset_defaults()


def test_a_library_log_line_is_a_json_line_like_hostds_own(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    structlog.get_logger("hostd.test").info("ours", model="m")
    logging.getLogger("aiokafka.consumer").warning("Heartbeat failed for group %s", "hostd")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("ours", "info"), ("Heartbeat failed for group hostd", "warning")]
    assert lines[1]["logger"] == "aiokafka.consumer"
    assert set(lines[0]) >= {"timestamp"} and set(lines[1]) >= {"timestamp"}


def test_library_lines_below_the_level_are_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", "json")
    logging.getLogger("redis").info("connected")
    logging.getLogger("hypercorn.error").error("Socket error")
    assert [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()] == ["Socket error"]


def test_a_library_exception_keeps_its_traceback_in_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        raise ValueError("broker went away")
    except ValueError:
        logging.getLogger("aiokafka").exception("Unexpected error")
    (line,) = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert line["event"] == "Unexpected error"
    assert "Traceback" in line["exception"] and "ValueError: broker went away" in line["exception"]


def test_a_record_that_cannot_be_formatted_is_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    logging.getLogger("arq.worker").warning("%s took %s", "only one argument")  # logging printed it raw
    (line,) = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert (line["event"], line["logger"], line["msg"]) == ("a log record could not be formatted", "arq.worker",
                                                           "'%s took %s'")
    assert "TypeError: not enough arguments" in line["exception"]


def test_an_exception_nothing_caught_is_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        raise ValueError("escaped")
    except ValueError:
        sys.excepthook(*sys.exc_info())  # what Python calls before it exits
    (line,) = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert (line["event"], line["level"]) == ("uncaught exception", "critical")
    assert "ValueError: escaped" in line["exception"]
