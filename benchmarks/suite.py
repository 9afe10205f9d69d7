"""Runs the loads, keeps the results, prints the table, writes the JSON and the chart."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import lifecycle, mlserver_peer, scenarios, security, startup
from benchmarks.common import ROOT, Result, free_port, start_hostd
from benchmarks.messaging import ws_load, zmq_load
from benchmarks.oip_infer import h2load, hostd_grpc_request, hostd_v2_body, wrk
from benchmarks.streams import run_streams

TRANSPORTS = ("http", "uvicorn", "grpc", "ws", "zmq", "streams", "overload", "workers", "lifecycle", "security",
              "startup")
RESULTS = ROOT / "benchmarks" / "results"
INFER = "/v2/models/iris_model/infer"
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


class Suite:
    def __init__(self, *, seconds: int, concurrency: list[int], in_flight: int, vs_mlserver: bool,
                 results: Path = RESULTS) -> None:
        self.results_dir = results
        self.seconds = seconds
        self.concurrency = concurrency
        self.in_flight = in_flight
        self.vs_mlserver = vs_mlserver
        self.results: list[Result] = []
        self.scenarios: dict[str, Any] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="hostd-bench-"))
        self.started = time.strftime("%Y%m%d-%H%M%S")

    def run(self, only: list[str]) -> None:
        if {"http", "uvicorn", "grpc"} & set(only):
            self.oip(only)
        if {"ws", "zmq"} & set(only):
            self.messaging(only)
        if "streams" in only:
            self.results += run_streams(messages=10_000, jobs=2_000)
        if "overload" in only:
            self.scenarios["overload"] = scenarios.overload(self.seconds, self.workdir)
        if "workers" in only:
            self.scenarios["process_workers"] = scenarios.process_workers(self.seconds, self.workdir)
        if "lifecycle" in only:
            self.scenarios["lifecycle"] = lifecycle.lifecycle(self.seconds, self.workdir)
        if "startup" in only:
            self.scenarios["startup"] = startup.startup(self.seconds, self.workdir)
        if "security" in only:
            self.scenarios["security"] = security.security(self.seconds, self.workdir)

    def oip(self, only: list[str]) -> None:
        """HTTP and gRPC ModelInfer: every server is up at once, and at each concurrency they take
        turns (hostd, hostd under uvicorn, MLServer), so a drift of the machine hits them all."""
        http, uvicorn, grpc = free_port(), free_port(), free_port()
        targets: list[tuple[str, str, str, bytes]] = []  # (server, transport, url, body)
        with ExitStack() as running:
            if "http" in only or "grpc" in only:
                running.enter_context(start_hostd({"http": {"port": http}, "grpc": {"port": grpc}}))
                if "http" in only:
                    targets.append(("hostd", "http", f"http://127.0.0.1:{http}{INFER}", hostd_v2_body()))
            if "uvicorn" in only:
                running.enter_context(start_hostd({"http": {"port": uvicorn, "server": "uvicorn"}}))
                targets.append(("hostd-uvicorn", "http", f"http://127.0.0.1:{uvicorn}{INFER}", hostd_v2_body()))
            if "grpc" in only:
                targets.append(("hostd", "grpc", f"http://127.0.0.1:{grpc}{GRPC_INFER}", hostd_grpc_request()))
            if self.vs_mlserver:
                peer_http, peer_grpc = free_port(), free_port()
                running.enter_context(mlserver_peer.start_mlserver(peer_http, peer_grpc, free_port()))
                if "http" in only or "uvicorn" in only:
                    targets.append(("mlserver", "http", f"http://127.0.0.1:{peer_http}{INFER}",
                                    mlserver_peer.v2_json_body()))
                if "grpc" in only:
                    targets.append(("mlserver", "grpc", f"http://127.0.0.1:{peer_grpc}{GRPC_INFER}",
                                    mlserver_peer.grpc_infer_request()))
            targets.sort(key=lambda target: target[1])  # HTTP runs first, then gRPC
            for concurrency in self.concurrency:
                for server, transport, url, body in targets:
                    load = wrk if transport == "http" else h2load
                    self.record(load(url, body, concurrency, self.seconds, self.workdir, server=server))

    def messaging(self, only: list[str]) -> None:
        ws, zmq = free_port(), free_port()
        transports = {"http": {"port": free_port()}, "ws": {"port": ws},
                      "zmq": {"bind": f"tcp://127.0.0.1:{zmq}", "zerorpc_bind": None}}
        with start_hostd(transports):
            for name, load, url in (("ws", ws_load, f"ws://127.0.0.1:{ws}"), ("zmq", zmq_load, f"tcp://127.0.0.1:{zmq}")):
                if name in only:
                    self.record(asyncio.run(load(url, 5_000, 1, self.seconds)))
                    self.record(asyncio.run(load(url, 1_000_000, self.in_flight, self.seconds)))

    def record(self, result: Result) -> None:
        self.results.append(result)
        print(_row(result), flush=True)

    def ratios(self) -> list[dict[str, Any]]:
        """hostd (and hostd under uvicorn) over MLServer, same transport and concurrency."""
        peer = {(r.transport, r.concurrency): r for r in self.results if r.server == "mlserver"}
        return [{"server": r.server, "vs": "mlserver", "transport": r.transport, "concurrency": r.concurrency,
                 "rps_ratio": round(r.rps / peer[key].rps, 2),
                 "p50_ratio": round(r.p50_ms / peer[key].p50_ms, 2) if r.p50_ms and peer[key].p50_ms else None}
                for r in self.results
                if r.server.startswith("hostd") and (key := (r.transport, r.concurrency)) in peer]

    def report(self) -> None:
        print(f"\n{HEADER}")
        for result in self.results:
            print(_row(result))
        ratios = self.ratios()
        for ratio in ratios:
            print(f"{ratio['server']} / MLServer, {ratio['transport']}, {ratio['concurrency']} concurrent: "
                  f"{ratio['rps_ratio']:.2f}x requests/s, p50 {ratio['p50_ratio']}x")
        for name, scenario in self.scenarios.items():
            print(f"{name}: {json.dumps(scenario)}")
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / f"{self.started}.json"
        path.write_text(json.dumps({"started": self.started, "machine": _machine(), "seconds": self.seconds,
                                    "results": [asdict(r) for r in self.results], "ratios": ratios,
                                    "scenarios": self.scenarios}, indent=2) + "\n")
        print(f"\nresults: {path}")
        chart = _chart(self.results, path.with_suffix(".png"))
        if chart:
            print(f"chart:   {chart}")


HEADER = (f"{'server':20} {'transport':9} {'concurrency':>11} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>7}  tool")


def _row(r: Result) -> str:
    def ms(value: float | None) -> str:
        return f"{value:8.2f}" if value is not None else f"{'-':>8}"

    return (f"{r.server:20} {r.transport:9} {r.concurrency:>11} {r.rps:>11,.0f} {ms(r.p50_ms)} {ms(r.p99_ms)} "
            f"{r.errors:>7}  {r.tool}")


def _machine() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "commit": commit.strip()}


def _chart(results: list[Result], path: Path) -> Path | None:
    """Requests/s against concurrency, one line per server and protocol (HTTP and gRPC)."""
    lines: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        if r.transport in ("http", "grpc"):
            lines.setdefault(f"{r.server} {r.transport}", []).append((r.concurrency, r.rps))
    if not lines:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for label, points in sorted(lines.items()):
        points.sort()
        axes.plot([c for c, _ in points], [rps for _, rps in points], marker="o", label=label)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("concurrent connections")
    axes.set_ylabel("requests/s (iris, one row per request)")
    axes.set_title(f"OIP v2 ModelInfer on {os.cpu_count()} cores")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
