"""rest-model-service 0.6.0 (Brian Schmidt's FastAPI service for ml_base models) serving iris: the
class in apps/rest_model_service_iris.py, named by apps/rest_config.yaml, under uvicorn as its README
runs it (`uvicorn rest_model_service.main:app`; uvicorn as the package installs it, no uvloop/httptools)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from benchmarks.peers.process import APPS, ESTIMATOR_PINS, ensure_venv, serve_app

NAME = "rest-model-service"
VERSION = "0.6.0"
ENDPOINT = "POST /api/models/iris_model/prediction, the row as JSON (FastAPI, pydantic)"
REQUIREMENTS = [f"rest-model-service=={VERSION}", *ESTIMATOR_PINS]


@contextmanager
def start_rest_model_service(port: int) -> Iterator[tuple[str, bytes]]:
    uvicorn = ensure_venv(NAME, REQUIREMENTS) / "uvicorn"
    # --log-level warning: no access log, as hostd is run with log_level warning.
    argv = [str(uvicorn), "rest_model_service.main:app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}/api/models/iris_model/prediction"
    with serve_app(NAME, argv, url, REST_CONFIG=str(APPS / "rest_config.yaml")) as served:
        yield served
