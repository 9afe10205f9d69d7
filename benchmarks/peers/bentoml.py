"""BentoML 1.4.40 serving iris: the @bentoml.service in apps/bentoml_iris.py under `bentoml serve`
(one worker, its default)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from benchmarks.peers.process import APPS, ESTIMATOR_PINS, ensure_venv, serve_app

NAME = "bentoml"
VERSION = "1.4.40"
ENDPOINT = "POST /predict, the row's fields as the @bentoml.api's parameters (JSON)"
REQUIREMENTS = [f"bentoml=={VERSION}", *ESTIMATOR_PINS]


@contextmanager
def start_bentoml(port: int) -> Iterator[tuple[str, bytes]]:
    bentoml = ensure_venv(NAME, REQUIREMENTS) / "bentoml"
    argv = [str(bentoml), "serve", "bentoml_iris:Iris", "--working-dir", str(APPS), "--host", "127.0.0.1",
            "--port", str(port)]
    with serve_app(NAME, argv, f"http://127.0.0.1:{port}/predict", BENTOML_DO_NOT_TRACK="True") as served:
        yield served
