"""Ray Serve 2.60 serving iris: the deployment in apps/ray_serve_iris.py (a FastAPI ingress, one
replica, Ray Serve's defaults) on a local Ray cluster of its own.

Ray idles at ~15% of a core here (its GCS, raylet and Serve controller poll), which would slow whatever
shares the machine with it; the suite measures it in a phase of its own, beside hostd alone."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from benchmarks.peers.process import APPS, ESTIMATOR_PINS, ensure_venv, serve_app

NAME = "ray-serve"
VERSION = "2.60.0"
ENDPOINT = "POST /predict, the row as JSON (Serve deployment, FastAPI ingress)"
REQUIREMENTS = [f"ray[serve]=={VERSION}", *ESTIMATOR_PINS]


@contextmanager
def start_ray_serve(port: int) -> Iterator[tuple[str, bytes]]:
    python = ensure_venv(NAME, REQUIREMENTS) / "python"
    argv = [str(python), str(APPS / "ray_serve_iris.py"), str(port)]
    # HOME is the work directory (Ray 2.60 writes an auth token under ~/.ray); without
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 it binds beyond 127.0.0.1. No usage statistics sent.
    with serve_app(NAME, argv, f"http://127.0.0.1:{port}/predict", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                   RAY_USAGE_STATS_ENABLED="0") as served:
        yield served
