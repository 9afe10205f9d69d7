"""/dashboard and /api/stats in-process (plugins/hostd_http/dashboard.py, rest.py): the page uses only its
own assets, the stats count what the app answered; with keys on (hostd.auth) the page and its assets are open
to all and the stats follow the read scope."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator

import httpx
import jsonschema
import pytest
from hostd_http.app import create_app
from hostd_http.connections import Connections
from hostd_http.dashboard import ASSETS
from hostd_http.front import Front

from hostd.auth import Guard
from hostd.dataplane import DataPlane
from hostd.settings import AuthSettings, HostSettings
from hostd.stats import SCHEMA
from tests.http.test_app import SETTINGS, Assets, anyio_backend, dataplane, rest_error, settings

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend", "dataplane", "settings"]  # the fixtures, shared with test_app.py

KEYS = {"reader": ["read"], "predictor": ["infer"], "echo-reader": ["read"]}


def key_of(name: str) -> str:
    return f"key-of-{name}"


@pytest.fixture
async def client(dataplane: DataPlane, settings: HostSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(dataplane, settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hostd") as http:
        yield http


@pytest.fixture
async def guarded(dataplane: DataPlane) -> AsyncIterator[httpx.AsyncClient]:
    """The app behind the transport's Front, with keys required: the front checks them (front._needs)."""
    keys = [{"name": name, "sha256": hashlib.sha256(key_of(name).encode()).hexdigest(), "scopes": scopes,
             **({"models": ["echo"]} if name == "echo-reader" else {})} for name, scopes in KEYS.items()]
    dataplane.guard = Guard(AuthSettings.model_validate({"keys": keys}))
    app = Front(create_app(dataplane, HostSettings.model_validate(SETTINGS)), dataplane, Connections(8),
                body_timeout_s=5)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hostd") as http:
        yield http


async def test_the_page_loads_only_its_own_assets(client: httpx.AsyncClient) -> None:
    page = await client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    links = Assets()
    links.feed(page.text)
    assert sorted(url.split("?")[0] for url in links.urls) == ["/dashboard/static/dashboard.css",
                                                               "/dashboard/static/dashboard.js"]
    for url in links.urls:
        asset = await client.get(url)
        assert asset.status_code == 200 and asset.content == (ASSETS / url.split("?")[0].rsplit("/", 1)[1]).read_bytes()
    # Nothing fetched from elsewhere (the SVG namespace is a name, never fetched); one API call.
    script = (ASSETS / "dashboard.js").read_text()
    assert re.findall(r"https?://[^\s\"'`]+", script + (ASSETS / "dashboard.css").read_text() + page.text) == [
        "http://www.w3.org/2000/svg"]
    assert re.findall(r"fetch\(\"([^\"]+)\"", script) == ["/api/stats"]


async def test_the_assets_urls_change_with_their_content(client: httpx.AsyncClient) -> None:
    # A browser caches the assets; a new version must be a new URL.
    versions = set(re.findall(r"\?v=(\w+)", (await client.get("/dashboard")).text))
    assert len(versions) == 1 and len(versions.pop()) == 12


async def test_stats_count_the_requests_the_app_answered(client: httpx.AsyncClient) -> None:
    for x in range(3):
        assert (await client.post("/api/models/echo/prediction", json={"x": x})).status_code == 200
    assert (await client.post("/api/models/echo/prediction", json={"x": "nope"})).status_code == 400
    stats = (await client.get("/api/stats")).json()
    jsonschema.validate(stats, SCHEMA)
    models = {model["name"]: model for model in stats["models"]}
    echo = models["echo"]
    assert [(v["version"], v["state"]) for v in echo["versions"]] == [("1.0.0", "READY"), ("2.0.0", "READY")]
    assert echo["transports"]["http"]["codes"] == {"OK": 3, "INVALID_INPUT": 1}
    assert echo["all"]["requests"] == 4 and echo["all"]["errors"] == {"INVALID_INPUT": 0.25}
    assert models["slow"]["all"]["requests"] == 0 and models["slow"]["transports"] == {}


async def test_stats_errors_are_in_the_authors_api_format(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/stats")
    rest_error(response, 405, "METHOD_NOT_ALLOWED")
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/static/dashboard.js", "/dashboard/static/dashboard.css"])
async def test_the_page_and_its_assets_are_open_to_all(guarded: httpx.AsyncClient, path: str) -> None:
    # A browser opening the page sends no key: the page holds no data, and asks for it with the key.
    response = await guarded.get(path)
    assert response.status_code == 200 and response.content
    if path == "/dashboard":
        assert "form-action 'none'" in response.headers["content-security-policy"]  # a key never goes in a URL


@pytest.mark.parametrize("path", ["/dashboards", "/dashboard/stats", "/dashboard/static"])
async def test_only_the_page_and_its_assets_are_open(guarded: httpx.AsyncClient, path: str) -> None:
    rest_error(await guarded.get(path), 401, "UNAUTHENTICATED")


async def test_stats_need_the_read_scope(guarded: httpx.AsyncClient) -> None:
    rest_error(await guarded.get("/api/stats"), 401, "UNAUTHENTICATED")
    rest_error(await guarded.get("/api/stats", headers={"Authorization": f"Bearer {key_of('predictor')}"}),
               403, "FORBIDDEN")
    assert (await guarded.get("/api/stats", headers={"Authorization": f"Bearer {key_of('reader')}"})).status_code == 200


async def test_stats_show_a_key_only_the_models_it_may_see(guarded: httpx.AsyncClient) -> None:
    def names(response: httpx.Response) -> list[str]:
        assert response.status_code == 200, response.text
        return [model["name"] for model in response.json()["models"]]

    def loaded(response: httpx.Response) -> tuple[int, int]:
        # models_loaded, and the READY versions the report lists: the same, whatever the key sees.
        stats = response.json()
        return stats["models_loaded"], sum(version["state"] == "READY" for model in stats["models"]
                                           for version in model["versions"])

    everything = await guarded.get("/api/stats", headers={"Authorization": f"Bearer {key_of('reader')}"})
    assert len(names(everything)) > 1 and "echo" in names(everything)
    only_echo = await guarded.get("/api/stats", headers={"Authorization": f"Bearer {key_of('echo-reader')}"})
    assert names(only_echo) == ["echo"]
    assert loaded(only_echo) == (2, 2)  # echo 1.0.0 and 2.0.0, not every model's versions
    assert loaded(everything)[0] == loaded(everything)[1] > 2
