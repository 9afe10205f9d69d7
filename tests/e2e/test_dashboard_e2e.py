"""/dashboard as a person sees it: headless Chromium loads the page of a real hostd while traffic flows,
and the numbers it shows are the traffic the test sent; with API keys on, the page takes its key from the
URL's fragment (and no log line holds it) or asks for one.

The screenshot Chromium takes is a test artifact: ``dashboard.png`` in the test's tmp_path, and copied
into the folder ``$TEST_ARTIFACTS`` names, if it is set (.ci/run sets it to ``artifacts/``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.sync.client import connect

from tests.support.browser import rendered_dom, screenshot
from tests.support.e2e import IRIS_ROWS, Start, echo, iris_payload, wait_for

pytestmark = pytest.mark.e2e

#: What identifies a number on the page: the data attributes of the elements around it (dashboard.js).
PLACES = ("data-model", "data-version", "data-transport", "data-code", "data-series")
VOID = {"br", "hr", "img", "input", "link", "meta"}
ROWS = list(IRIS_ROWS)  # five iris rows: after its first time each is a cache hit
OK_HTTP, INVALID_HTTP, OK_WS = 37, 5, 11
SENT_WITH_A_KEY = 13


class Shown(HTMLParser):
    """The text of every element with a data-field, by (the places around it..., field); and the
    attributes of the elements with an id, or a data-series (the charts)."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.open: list[tuple[str, dict[str, str], list[str]]] = []
        self.fields: dict[tuple[str, ...], str] = {}
        self.elements: dict[str, dict[str, str]] = {}
        self.feed(dom)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {name: value or "" for name, value in attrs}
        if tag == "body" or "id" in named:
            self.elements[named.get("id", tag)] = named
        if "data-series" in named:
            self.elements[f"{self.place(named)[0]}/{named['data-series']}"] = named
        if tag not in VOID:
            self.open.append((tag, named, []))

    def place(self, own: dict[str, str]) -> tuple[str, ...]:
        around = [attrs for _, attrs, _ in self.open] + [own]
        return tuple(attrs[name] for attrs in around for name in PLACES if name in attrs)

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            name, attrs, parts = self.open.pop()
            text = "".join(parts)
            if self.open:
                self.open[-1][2].append(text)
            if "data-field" in attrs:
                self.fields[(*self.place(attrs), attrs["data-field"])] = text.strip()
            if name == tag:
                return

    def handle_data(self, data: str) -> None:
        if self.open:
            self.open[-1][2].append(data)

    def count(self, *key: str) -> int:
        return int(self.fields[key].replace(",", ""))


@contextmanager
def flowing(url: str) -> Iterator[list[int]]:
    """Echo predictions over HTTP, one after another, until the block ends; yields [answered so far]."""
    answered = [0]
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                response = http.post("/api/models/echo/prediction", json={"x": answered[0] % 100})
                assert response.status_code == 200, response.text  # in a thread: pytest fails the test on it
                answered[0] += 1
                stop.wait(0.01)  # a steady trickle, leaving the two cores to hostd and Chromium

    thread = threading.Thread(target=send, name="echo traffic")
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join(10)


def stats(url: str) -> dict[str, dict[str, object]]:
    return {model["name"]: model for model in httpx.get(f"{url}/api/stats", timeout=5).json()["models"]}


@pytest.mark.timeout(120)
def test_the_dashboard_shows_the_traffic_sent(start_hostd: Start, tmp_path: Path) -> None:
    server = start_hostd({"models": [{"class_path": "iris_model.model:IrisModel", "cache": {"max_entries": 100}},
                                     echo(workers=2)],
                          "transports": {"http": {}, "ws": {}}})
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for i in range(OK_HTTP):
            assert http.post("/api/models/iris_model/prediction", json=iris_payload(ROWS[i % 5])).status_code == 200
        for _ in range(INVALID_HTTP):
            assert http.post("/api/models/iris_model/prediction", json={"sepal_length": "long"}).status_code == 400
    with connect(f"ws://127.0.0.1:{server.transports['ws']['port']}", open_timeout=10) as ws:
        for i in range(OK_WS):
            ws.send(orjson.dumps({"id": i, "model": "iris_model", "data": iris_payload(ROWS[i % 5])}).decode())
            assert "prediction" in orjson.loads(ws.recv(timeout=10))
    with flowing(server.url) as answered:
        # A second of it kept in the stats' ring: the chart has a point, and the rate is the trickle's.
        wait_for(lambda: len(stats(server.url)["echo"]["history"]["t"]) >= 2, "two points of echo's history")
        before = answered[0]
        dom = rendered_dom(f"{server.url}/dashboard", tmp_path / "chromium", budget_ms=4000)
        after = answered[0]
        screenshot(f"{server.url}/dashboard", tmp_path / "chromium", tmp_path / "dashboard.png", budget_ms=2500)
    if os.environ.get("TEST_ARTIFACTS"):
        shutil.copy(tmp_path / "dashboard.png", Path(os.environ["TEST_ARTIFACTS"]) / "dashboard.png")

    shown = Shown(dom)
    assert shown.elements["status"]["data-state"] == "live"
    assert int(shown.elements["body"]["data-polls"]) >= 2  # it went on polling: the page updates itself
    assert shown.fields[("iris_model", "1.0.0", "state")] == "READY"
    assert shown.fields[("echo", "1.0.0", "state")] == "READY"
    # The finished traffic, exactly: per transport, by code, and together.
    assert shown.count("iris_model", "http", "requests") == OK_HTTP + INVALID_HTTP
    assert shown.count("iris_model", "http", "OK", "count") == OK_HTTP
    assert shown.count("iris_model", "http", "INVALID_INPUT", "count") == INVALID_HTTP
    assert shown.count("iris_model", "ws", "requests") == shown.count("iris_model", "ws", "OK", "count") == OK_WS
    assert ("iris_model", "ws", "INVALID_INPUT", "count") not in shown.fields
    assert shown.count("iris_model", "all", "requests") == OK_HTTP + INVALID_HTTP + OK_WS
    assert shown.count("iris_model", "all", "INVALID_INPUT", "count") == INVALID_HTTP
    # Five rows missed the cache once each; every other valid request was a hit.
    assert shown.fields[("iris_model", "1.0.0", "cache")] == f"{OK_HTTP + OK_WS - 5} hits, 5 misses"
    assert shown.fields[("echo", "1.0.0", "cache")] == "no cache"
    assert shown.count("iris_model", "pending") == 0
    # The traffic still flowing: what had been answered when Chromium started, at least, and no more
    # than had been when it finished; at a rate and with a latency.
    assert before <= shown.count("echo", "http", "requests") <= after
    assert float(shown.fields[("echo", "http", "per-s")]) > 0
    assert float(shown.fields[("echo", "http", "p99-ms")]) > 0
    assert shown.fields[("echo", "http", "error-rate")] == "0.0%"
    assert int(shown.elements["echo/per-s"]["data-points"]) >= 1
    assert ("echo", "ws", "requests") not in shown.fields  # no row for a transport it was not asked on


def test_with_keys_on_the_page_takes_its_key_from_the_fragment_or_asks_for_one(start_hostd: Start,
                                                                             tmp_path: Path) -> None:
    keys = {name: f"hostd_{name}-{secrets.token_urlsafe(16)}" for name in ("reader", "predictor")}
    server = start_hostd({
        "models": [echo(workers=1)],
        "auth": {"keys": [{"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(),
                           "scopes": ["read" if name == "reader" else "infer"]} for name, key in keys.items()]},
        "transports": {"http": {"access_log": True}}})
    with httpx.Client(base_url=server.url, timeout=10,
                      headers={"Authorization": f"Bearer {keys['predictor']}"}) as http:
        for x in range(SENT_WITH_A_KEY):
            assert http.post("/api/models/echo/prediction", json={"x": x}).status_code == 200

    shown = Shown(rendered_dom(f"{server.url}/dashboard#key={keys['reader']}", tmp_path / "chromium-key",
                               budget_ms=2500))
    assert shown.elements["status"]["data-state"] == "live"
    assert "hidden" in shown.elements["key-form"]
    assert shown.count("echo", "http", "requests") == shown.count("echo", "http", "OK", "count") == SENT_WITH_A_KEY

    # A new browser, so a new session: no key in it.
    dom = rendered_dom(f"{server.url}/dashboard", tmp_path / "chromium-none", budget_ms=2500)
    shown = Shown(dom)
    assert shown.elements["status"]["data-state"] == "error"
    assert "hidden" not in shown.elements["key-form"] and "An API key is needed." in dom
    assert shown.fields == {}  # not one number: no model section, no traffic row
    assert int(shown.elements["body"]["data-polls"]) == 0
    dom = rendered_dom(f"{server.url}/dashboard#key={keys['predictor']}", tmp_path / "chromium-infer", budget_ms=2500)
    assert "hidden" not in Shown(dom).elements["key-form"] and "This key lacks the read scope." in dom
    assert Shown(dom).fields == {}
    # A key no header can carry (a newline; anything but printable ASCII): refused at once, never sent.
    dom = rendered_dom(f"{server.url}/dashboard#key=abc%0Adef", tmp_path / "chromium-newline", budget_ms=1000)
    shown = Shown(dom)
    assert "hidden" not in shown.elements["key-form"] and "This key is not valid: a key is printable ASCII." in dom
    assert shown.elements["status"]["data-state"] == "error" and "does not answer" not in dom
    assert shown.fields == {} and int(shown.elements["body"]["data-polls"]) == 0

    assert server.stop() == 0
    lines = [orjson.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    access = [line["event"] for line in lines if line.get("logger") == "uvicorn.access"]
    # No URL logged holds a key: the read key reached /api/stats in a header (its URL has none, and it was
    # answered), as the access log, which logs every URL, shows.
    for key in keys.values():
        assert key not in server.output()
    assert any('"GET /dashboard HTTP/1.1" 200' in line for line in access), access
    assert any('"GET /api/stats HTTP/1.1" 200' in line for line in access), access
    assert any('"GET /api/stats HTTP/1.1" 401' in line for line in access), access
