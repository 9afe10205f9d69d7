"""hostd run's log: one format (JSON lines off a terminal) for hostd's own lines and the libraries'."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.e2e import Start, echo

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(("server_name", "request_line"), [
    ("uvicorn", '"POST /api/models/echo/prediction HTTP/1.1" 200'),
    ("hypercorn", '"POST /api/models/echo/prediction 1.1" 200')])
def test_the_access_log_and_a_brokers_absence_come_out_as_hostd_json_lines(start_hostd: Start, server_name: str,
                                                                           request_line: str) -> None:
    server = start_hostd({"models": [echo()], "transports": {
        "http": {"access_log": True, "server": server_name},
        "kafka": {"bootstrap_servers": "127.0.0.1:9", "retry_backoff_s": 0.2}}})  # nothing listens on 9
    assert httpx.post(f"{server.url}/api/models/echo/prediction", json={"x": 1}).status_code == 200
    server.stop()
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == f"{server_name}.access"]
    predictions = [line for line in access if request_line in line["event"]]
    assert len(predictions) == 1, access
    assert {"timestamp", "level"} <= set(predictions[0])
    kafka = [line for line in lines if str(line.get("logger", "")).startswith("aiokafka")]
    assert kafka and kafka[0]["level"] == "error" and "127.0.0.1:9" in kafka[0]["event"]
    assert all(line.startswith("{") for line in server.output().splitlines() if line.strip()), server.output()
