"""/dashboard: a page that draws /api/stats (hostd.stats) once a second. Its HTML, script and style ship
in this package (the dashboard/ folder): no CDN, no build step. The page is static and holds no data;
the figures come from /api/stats, under the key's read scope like every /api route."""

from __future__ import annotations

import hashlib
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

ASSETS = Path(__file__).with_name("dashboard")


def routes() -> list[Route | Mount]:
    # The assets' URLs name a hash of their content: StaticFiles sends no Cache-Control, so a browser
    # would go on using a cached old script after an upgrade (see docs.py on the Swagger UI assets).
    version = hashlib.sha256(b"".join(path.read_bytes() for path in sorted(ASSETS.iterdir()))).hexdigest()[:12]
    page = (ASSETS / "index.html").read_text().replace("{version}", version)

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(page)

    return [
        Route("/dashboard", dashboard),
        Mount("/dashboard/static", StaticFiles(directory=ASSETS), name="dashboard-static"),
    ]
