"""What tracing costs on the HTTP path (issue 20): iris through the author API from 16 connections, hostd with
tracing off (the default), on with nothing sampled (every request still asks the sampler), with a tenth and with
every request sampled and exported over OTLP/HTTP to a collector on this machine. Every hostd is up at once and
they take turns, twice, so a drift of the machine hits them all; each figure is the better of its two runs.

The collector takes each export and answers it without decoding it: what is measured is hostd's cost (spans
made, batched and encoded on the exporter's thread), not a collector's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import IRIS, Result, free_port, start_hostd
from benchmarks.oip_infer import wrk

CONNECTIONS = 16
ROUNDS = 2


def tracing(seconds: int, workdir: Path) -> dict[str, Any]:
    body = orjson.dumps(IRIS)
    exported = {"requests": 0, "bytes": 0}
    with ExitStack() as running:
        endpoint = running.enter_context(_collector(exported))
        variants: dict[str, dict[str, Any] | None] = {
            "off": None,
            "on, sample 0": {"exporter": "otlp", "endpoint": endpoint, "sample_ratio": 0.0},
            "on, sample 0.1 (OTLP)": {"exporter": "otlp", "endpoint": endpoint, "sample_ratio": 0.1},
            "on, sample 1 (OTLP)": {"exporter": "otlp", "endpoint": endpoint, "sample_ratio": 1.0},
        }
        ports = {name: free_port() for name in variants}
        for name, settings in variants.items():
            extra = {"tracing": settings} if settings is not None else {}
            running.enter_context(start_hostd({"http": {"port": ports[name]}}, **extra))
        runs: dict[str, list[Result]] = {name: [] for name in variants}
        for _ in range(ROUNDS):
            for name in variants:
                runs[name].append(wrk(f"http://127.0.0.1:{ports[name]}/api/models/iris_model/prediction", body,
                                      CONNECTIONS, seconds, workdir, server=f"tracing {name}"))
    best = {name: max(results, key=lambda result: result.rps) for name, results in runs.items()}
    off = best["off"]
    return {"connections": CONNECTIONS, "rounds": ROUNDS, "exported": exported,
            "results": [{"server": result.server, "rps": round(result.rps), "p50_ms": result.p50_ms,
                         "p99_ms": result.p99_ms, "errors": result.errors} for result in best.values()],
            "vs_off": {name: {"rps": round(result.rps / off.rps, 2), "p99": round(result.p99_ms / off.p99_ms, 2)}
                       for name, result in best.items() if name != "off"}}


@contextmanager
def _collector(exported: dict[str, int]) -> Iterator[str]:
    """An OTLP/HTTP endpoint that takes every export and throws it away, counting them."""

    class Take(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            size = int(self.headers["content-length"])
            self.rfile.read(size)
            exported["requests"] += 1
            exported["bytes"] += size
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Take)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()
