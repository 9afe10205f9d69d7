"""LitServe 0.2.19 (Lightning AI) serving iris: the LitAPI in apps/litserve_iris.py, one inference
worker beside one API server process (its defaults on CPU)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from benchmarks.peers.process import APPS, ESTIMATOR_PINS, ensure_venv, serve_app

NAME = "litserve"
VERSION = "0.2.19"
ENDPOINT = "POST /predict, the row as JSON (LitAPI decode_request/predict/encode_response)"
REQUIREMENTS = [f"litserve=={VERSION}", *ESTIMATOR_PINS]


@contextmanager
def start_litserve(port: int) -> Iterator[tuple[str, bytes]]:
    python = ensure_venv(NAME, REQUIREMENTS) / "python"
    argv = [str(python), str(APPS / "litserve_iris.py"), str(port)]
    # SIGINT: on SIGTERM LitServe exits and its worker processes outlive it.
    with serve_app(NAME, argv, f"http://127.0.0.1:{port}/predict", stop_signal=signal.SIGINT) as served:
        yield served
