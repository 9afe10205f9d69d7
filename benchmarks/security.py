"""What security costs (issue 15), measured side by side in one run, iris, 16 connections:

- HTTPS against HTTP, and gRPC over TLS against plaintext (three hostd up at once, taking turns).
- API keys: the same plaintext HTTP load with a Bearer key checked on every request, against none.
- The rate limiter: one key offered far over its limit (wrk, as fast as it goes) while a probe with
  another key predicts one request at a time: the refusals a second (429s), and the probe's p99
  against a quiet run.
"""

from __future__ import annotations

import hashlib
import os
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import trustme

from benchmarks.common import IRIS, Result, free_port, start_hostd
from benchmarks.oip_infer import h2load, hostd_grpc_request, wrk
from benchmarks.scenarios import _probe

CONNECTIONS = 16
PREDICT = "/api/models/iris_model/prediction"
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
KEYS = {"loader": "bench-key-loader", "probe": "bench-key-probe"}
RATE_PER_S = 400.0  # the loader's limit: wrk offers ~4-5x this; the probe (~200/s) stays under it


def security(seconds: int, workdir: Path) -> dict[str, Any]:
    tls = _certificates(workdir)
    auth = {"keys": [{"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": ["infer"]}
                     for name, key in KEYS.items()]}
    body = orjson.dumps(IRIS)
    plain, secure, keyed = (free_port(), free_port()), (free_port(), free_port()), free_port()
    results: list[Result] = []
    with ExitStack() as running:
        running.enter_context(start_hostd({"http": {"port": plain[0]}, "grpc": {"port": plain[1]}}))
        running.enter_context(start_hostd({"http": {"port": secure[0], "tls": tls},
                                           "grpc": {"port": secure[1], "tls": tls}}))
        running.enter_context(start_hostd({"http": {"port": keyed}}, auth=auth))
        bearer = {"Authorization": f"Bearer {KEYS['loader']}"}
        results += [
            wrk(f"http://127.0.0.1:{plain[0]}{PREDICT}", body, CONNECTIONS, seconds, workdir, server="hostd http"),
            wrk(f"https://127.0.0.1:{secure[0]}{PREDICT}", body, CONNECTIONS, seconds, workdir, server="hostd https"),
            wrk(f"http://127.0.0.1:{keyed}{PREDICT}", body, CONNECTIONS, seconds, workdir, server="hostd http + key",
                headers=bearer),
            h2load(f"http://127.0.0.1:{plain[1]}{GRPC_INFER}", hostd_grpc_request(), CONNECTIONS, seconds, workdir,
                   server="hostd grpc"),
            h2load(f"https://127.0.0.1:{secure[1]}{GRPC_INFER}", hostd_grpc_request(), CONNECTIONS, seconds, workdir,
                   server="hostd grpc tls"),
        ]
    rps = {result.server: result for result in results}
    return {
        "connections": CONNECTIONS,
        "results": [{"server": r.server, "rps": round(r.rps), "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                     "errors": r.errors} for r in results],
        "https_vs_http": round(rps["hostd https"].rps / rps["hostd http"].rps, 2),
        "grpc_tls_vs_plaintext": round(rps["hostd grpc tls"].rps / rps["hostd grpc"].rps, 2),
        "keys_vs_none": round(rps["hostd http + key"].rps / rps["hostd http"].rps, 2),
        "rate_limit": _rate_limited(seconds, workdir, auth, body),
    }


def _rate_limited(seconds: int, workdir: Path, auth: dict[str, Any], body: bytes) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}{PREDICT}"
    probe_key = {"Authorization": f"Bearer {KEYS['probe']}"}
    with start_hostd({"http": {"port": port}}, auth=auth, rate_limit={"per_s": RATE_PER_S, "burst": 20}):
        quiet = _probe(url, 2, body, probe_key)
        probe: dict[str, Any] = {}
        prober = threading.Thread(target=lambda: probe.update(_probe(url, seconds, body, probe_key)))
        prober.start()
        statuses: dict[int, int] = {}
        load = wrk(url, body, CONNECTIONS, seconds, workdir, server="hostd rate-limited", statuses=statuses,
                   headers={"Authorization": f"Bearer {KEYS['loader']}"})
        prober.join()
    return {"limit_per_s": RATE_PER_S, "offered_rps": round(load.rps),
            "admitted_per_s": round(statuses.get(200, 0) / seconds),
            "refused_per_s": round(statuses.get(429, 0) / seconds), "statuses": statuses,
            "other_key_p99_ms": {"quiet": quiet["p99_ms"], "while_refusing": probe["p99_ms"]},
            "other_key_statuses": probe["statuses"]}


def _certificates(workdir: Path) -> dict[str, str]:
    """A server certificate for 127.0.0.1 from a throwaway CA (the load generators do not verify it)."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = workdir / "server.pem", workdir / "server.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    os.chmod(key, 0o600)
    return {"cert": str(cert), "key": str(key)}
