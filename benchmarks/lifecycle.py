"""Model lifecycle at run time (issue 14): how long a load takes to serve, and what a reload under load
costs the clients.

- Load to serving: POST /v2/repository/models/digits_model/load (a 100-tree forest), then the first
  prediction answered; unloaded again between rounds. Timed from the call to that first answer.
- Reload under load: wrk predicts iris from 16 connections while iris itself is reloaded again and
  again (new before old); every response status is counted: anything but 200 is a lost request.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.common import IRIS, free_port, start_hostd
from benchmarks.oip_infer import wrk

ROUNDS = 5
RELOAD_EVERY_S = 0.5
CONNECTIONS = 16


def lifecycle(seconds: int, workdir: Path) -> dict[str, Any]:
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}"
    models = [{"class_path": "iris_model.model:IrisModel", "max_pending": 4096},
              {"class_path": "digits_model.model:DigitsModel"}]
    with start_hostd({"http": {"port": http_port}}, models, startup=["iris_model"], admin={"enabled": True}), \
            httpx.Client(base_url=base, timeout=120) as client:
        load_s = [_load_to_serving(client) for _ in range(ROUNDS)]
        statuses: dict[int, int] = {}
        reloads: list[float] = []
        stop = threading.Event()
        reloader = threading.Thread(target=_reload_until, args=(base, stop, reloads))
        reloader.start()
        try:
            result = wrk(f"{base}/api/models/iris_model/prediction", orjson.dumps(IRIS), CONNECTIONS, seconds,
                         workdir, server="hostd", statuses=statuses)
        finally:
            stop.set()
            reloader.join()
    answered = sum(statuses.values())
    return {
        "load_to_serving_s": {"rounds": ROUNDS, "median": round(statistics.median(load_s), 3),
                              "max": round(max(load_s), 3)},
        "reload_under_load": {"seconds": seconds, "connections": CONNECTIONS, "reloads": len(reloads),
                              "reload_s_median": round(statistics.median(reloads), 3) if reloads else None,
                              "requests": answered, "rps": round(result.rps), "statuses": statuses,
                              "lost": answered - statuses.get(200, 0) + result.errors},
    }


def _load_to_serving(client: httpx.Client) -> float:
    started = time.perf_counter()
    client.post("/v2/repository/models/digits_model/load").raise_for_status()
    client.post("/api/models/digits_model/prediction", json=_digits_row()).raise_for_status()
    elapsed = time.perf_counter() - started
    client.post("/v2/repository/models/digits_model/unload").raise_for_status()
    return elapsed


def _reload_until(base: str, stop: threading.Event, took: list[float]) -> None:
    with httpx.Client(base_url=base, timeout=120) as client:
        while not stop.wait(RELOAD_EVERY_S):  # bounded by the wrk run
            started = time.perf_counter()
            client.post("/v2/repository/models/iris_model/load").raise_for_status()
            took.append(time.perf_counter() - started)


def _digits_row() -> dict[str, Any]:
    from sklearn.datasets import load_digits

    pixels = [int(value) for value in load_digits().data[0]]
    return {"image": [pixels[row * 8:row * 8 + 8] for row in range(8)]}
