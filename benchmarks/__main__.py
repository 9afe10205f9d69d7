"""The load-test suite: hostd on every transport, optionally side by side with other model servers.

    python -m benchmarks [--vs mlserver|all] [--seconds 10] [--concurrency 1,16,64] [--only http,grpc,...]
    make bench ARGS="--vs mlserver"    make bench-all (= make bench ARGS="--vs all")

Load generators: wrk (HTTP, Lua script), h2load (gRPC ModelInfer replayed), our asyncio clients for
WebSocket, ZeroMQ, Kafka and arq. Prints a table; writes benchmarks/results/<time>.json and a PNG
chart of throughput against concurrency. With --vs mlserver, MLServer 1.7.1 (installed into
.bench/mlserver-venv on first use) serves the same iris estimator and gets the same HTTP and gRPC
loads, alternating with hostd at each concurrency.

With --vs all, hostd's HTTP runs (its author API, /api/models/iris_model/prediction) take turns at each
concurrency with MLServer, rest-model-service, LitServe, BentoML and Ray Serve, each installed into its
own .bench/<name>-venv on first use (pinned) and serving the same estimator at its own single-row JSON
endpoint (see benchmarks/peers/). Ray Serve, busy even when idle, is measured after the others, beside
a hostd of its own. A peer that cannot be installed or started is listed with the reason. Also prints
(and writes next to the JSON) Markdown tables of the runs and of hostd over each peer.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from benchmarks.suite import RESULTS, TRANSPORTS, Suite


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vs", choices=["mlserver", "all"],
                        help="also load MLServer (HTTP and gRPC), or every peer (HTTP), with the same model")
    parser.add_argument("--seconds", type=int, default=10, help="length of each timed run")
    parser.add_argument("--concurrency", default="1,16,64", help="HTTP/gRPC connections, comma-separated")
    parser.add_argument("--in-flight", type=int, default=200, help="pipelined WebSocket/ZeroMQ requests (2 clients)")
    parser.add_argument("--only", default=",".join(TRANSPORTS),
                        help=f"what to run, comma-separated, of: {', '.join(TRANSPORTS)}")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON and the chart go")
    args = parser.parse_args()
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(TRANSPORTS)
    if unknown:
        raise SystemExit(f"unknown --only {', '.join(sorted(unknown))}; choose from {', '.join(TRANSPORTS)}")
    needs = {"wrk": {"http", "hypercorn", "overload", "memory", "workers", "lifecycle", "security", "capture",
                     "tracing"},
             "h2load": {"grpc", "security"}}
    for tool, used_by in needs.items():
        if used_by & set(only) and not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (apt-get install wrk nghttp2-client; `make bench` does it)")
    suite = Suite(seconds=args.seconds, concurrency=[int(c) for c in args.concurrency.split(",")],
                  in_flight=args.in_flight, vs=args.vs, results=args.results)
    suite.run(only)
    suite.report()


if __name__ == "__main__":
    main()
