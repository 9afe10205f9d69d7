"""/dashboard: a page that draws /api/stats (hostd.stats) once a second. Its HTML, script and style ship
in this package (the dashboard/ folder): no CDN, no build step. The page and its assets are static and
hold no data, so they are open to all (front._needs); the figures come from /api/stats, under the read
scope like every /api route: the page sends the key it was given in its URL's fragment or its form."""

from __future__ import annotations

import hashlib
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

ASSETS = Path(__file__).with_name("dashboard")
PAGE = "/dashboard"
STATIC = "/dashboard/static"
#: Only this origin's script, style and requests; the key form never submits (its key would go into a
#: URL, and the server's logs, if the script failed to take the submit); no framing of the key form.
POLICY = "default-src 'self'; form-action 'none'; frame-ancestors 'none'"


def routes() -> list[Route | Mount]:
    # The assets' URLs name a hash of their content: StaticFiles sends no Cache-Control, so a browser
    # would go on using a cached old script after an upgrade (see docs.py on the Swagger UI assets).
    version = hashlib.sha256(b"".join(path.read_bytes() for path in sorted(ASSETS.iterdir()))).hexdigest()[:12]
    page = (ASSETS / "index.html").read_text().replace("{version}", version)

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": POLICY})

    return [
        Route(PAGE, dashboard),
        Mount(STATIC, StaticFiles(directory=ASSETS), name="dashboard-static"),
    ]
