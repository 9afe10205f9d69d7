"""Runs the loads, keeps the results, prints the table, writes the JSON and the chart."""

from __future__ import annotations

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

import hostd
from benchmarks import batch, capture, engines, lifecycle, memory, scenarios, security, startup, tracing
from benchmarks.common import ROOT, Result, free_port, start_hostd
from benchmarks.messaging import ws_load, zmq_load
from benchmarks.oip_infer import h2load, hostd_grpc_request, hostd_v2_body, wrk
from benchmarks.peers import PEERS, mlserver
from benchmarks.peers.compare import HOSTD_ENDPOINT, TIMEOUT_S, Comparison, compare, ratio
from benchmarks.peers.table import markdown, ratio_line
from benchmarks.streams import run_streams

TRANSPORTS = ("http", "hypercorn", "grpc", "ws", "zmq", "streams", "overload", "workers", "lifecycle", "security",
              "startup", "memory", "batch", "capture", "engines", "tracing")
RESULTS = ROOT / "benchmarks" / "results"
INFER = "/v2/models/iris_model/infer"
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


class Suite:
    def __init__(self, *, seconds: int, concurrency: list[int], in_flight: int, vs: str | None = None,
                 results: Path = RESULTS) -> None:
        self.results_dir = results
        self.seconds = seconds
        self.concurrency = concurrency
        self.in_flight = in_flight
        self.vs = vs  # None, "mlserver" or "all"
        self.versus: Comparison | None = None  # --vs all's runs, skips and ratios
        self.compared: list[Result] = []  # the runs of --vs all's comparison (its own tables and chart)
        self.results: list[Result] = []
        self.scenarios: dict[str, Any] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="hostd-bench-"))
        self.started = time.strftime("%Y%m%d-%H%M%S")

    def run(self, only: list[str]) -> None:
        if self.vs == "all" and "http" in only:
            first = len(self.results)
            self.versus = compare(PEERS, self.concurrency, self.seconds, self.workdir, self.record)
            self.compared = self.results[first:]
            only = [name for name in only if name != "http"]  # hostd's HTTP runs were the comparison's
        if {"http", "hypercorn", "grpc"} & set(only):
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
        if "memory" in only:
            self.scenarios["memory"] = memory.memory(self.seconds, self.workdir)
        if "batch" in only:
            self.scenarios["batch"] = batch.batch(self.seconds, self.workdir)
        if "capture" in only:
            self.scenarios["capture"] = capture.capture(self.seconds, self.workdir)
        if "engines" in only:
            self.scenarios["engines"] = engines.engines(self.seconds, self.workdir)
        if "tracing" in only:
            self.scenarios["tracing"] = tracing.tracing(self.seconds, self.workdir)

    def oip(self, only: list[str]) -> None:
        """HTTP and gRPC ModelInfer: every server is up at once, and at each concurrency they take
        turns (hostd, hostd under hypercorn, MLServer), so a drift of the machine hits them all."""
        http, hypercorn, grpc = free_port(), free_port(), free_port()
        targets: list[tuple[str, str, str, bytes]] = []  # (server, transport, url, body)
        with ExitStack() as running:
            if "http" in only or "grpc" in only:
                running.enter_context(start_hostd({"http": {"port": http}, "grpc": {"port": grpc}}))
                if "http" in only:
                    targets.append(("hostd", "http", f"http://127.0.0.1:{http}{INFER}", hostd_v2_body()))
            if "hypercorn" in only:
                running.enter_context(start_hostd({"http": {"port": hypercorn, "server": "hypercorn"}}))
                targets.append(("hostd-hypercorn", "http", f"http://127.0.0.1:{hypercorn}{INFER}", hostd_v2_body()))
            if "grpc" in only:
                targets.append(("hostd", "grpc", f"http://127.0.0.1:{grpc}{GRPC_INFER}", hostd_grpc_request()))
            if self.vs in ("mlserver", "all"):  # with all, MLServer is also the gRPC peer
                peer_grpc = free_port()
                url, body = running.enter_context(mlserver.start_mlserver(free_port(), peer_grpc))
                if "http" in only or "hypercorn" in only:
                    targets.append(("mlserver", "http", url, body))
                if "grpc" in only:
                    targets.append(("mlserver", "grpc", f"http://127.0.0.1:{peer_grpc}{GRPC_INFER}",
                                    mlserver.grpc_infer_request()))
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
                    self.record(load(url, 5_000, 1, self.seconds))
                    self.record(load(url, 1_000_000, self.in_flight, self.seconds))

    def record(self, result: Result) -> None:
        self.results.append(result)
        print(_row(result), flush=True)

    def ratios(self) -> list[dict[str, Any]]:
        """--vs all: hostd over each peer, per phase and concurrency. --vs mlserver: hostd (and hostd
        under uvicorn) over MLServer, same transport and concurrency."""
        compared = {id(r) for r in self.compared}
        others = [r for r in self.results if id(r) not in compared]  # e.g. gRPC, also run with --vs all
        peer = {(r.transport, r.concurrency): r for r in others if r.server == "mlserver"}
        return (self.versus.ratios if self.versus is not None else []) + [
            ratio(r, peer[key]) for r in others
            if r.server.startswith("hostd") and (key := (r.transport, r.concurrency)) in peer]

    def report(self) -> None:
        print(f"\n{HEADER}")
        for result in self.results:
            print(_row(result))
        ratios = self.ratios()
        for one in ratios:
            print(ratio_line(one))
        for name, scenario in self.scenarios.items():
            print(f"{name}: {json.dumps(scenario)}")
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / f"{self.started}.json"
        machine = _machine()
        report = {"started": self.started, "machine": machine, "seconds": self.seconds,
                  "results": [asdict(r) for r in self.results], "ratios": ratios, "scenarios": self.scenarios}
        if self.versus is not None:
            report["peers"] = self.peers_report(path.with_suffix(".md"), machine)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nresults: {path}")
        chart = _chart(self.compared or self.results, path.with_suffix(".png"), peers=self.versus is not None)
        if chart:
            print(f"chart:   {chart}")

    def peers_report(self, path: Path, machine: dict[str, Any]) -> dict[str, Any]:
        """--vs all: print the comparison as Markdown tables, also written to ``path``; what the JSON keeps."""
        assert self.versus
        servers = {"hostd": {"version": hostd.__version__, "endpoint": HOSTD_ENDPOINT}}
        servers |= {p.name: {"version": p.version, "endpoint": p.endpoint} for p in PEERS}
        names = {name: f"{name} {server['version']}" for name, server in servers.items()}
        dirty = " (with uncommitted changes)" if machine["dirty"] else ""
        text = (f"Measured at commit {machine['commit']}{dirty}, {self.started}, {machine['cpus']} cores, "
                f"wrk {self.seconds} s per run, timeout {TIMEOUT_S} s\n\n"
                + markdown(self.compared, self.versus.ratios, self.versus.skipped, names, self.concurrency))
        print(f"\n{text}")
        path.write_text(text)
        print(f"table:   {path}")
        return {"servers": servers, "skipped": self.versus.skipped, "phases": self.versus.phases,
                "wrk_timeout_s": TIMEOUT_S}


HEADER = (f"{'server':24} {'transport':9} {'concurrency':>11} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>7}  tool")


def _row(r: Result) -> str:
    def ms(value: float | None) -> str:
        return f"{value:8.2f}" if value is not None else f"{'-':>8}"

    return (f"{r.server:24} {r.transport:9} {r.concurrency:>11} {r.rps:>11,.0f} {ms(r.p50_ms)} {ms(r.p99_ms)} "
            f"{r.errors:>7}  {r.tool}")


def _machine() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                             text=True).stdout
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "commit": commit.strip(), "dirty": bool(changes.strip())}


def _chart(results: list[Result], path: Path, *, peers: bool = False) -> Path | None:
    """Requests/s against concurrency, one line per server and protocol (HTTP and gRPC). With ``peers``
    (--vs all) the scale is logarithmic: the servers are orders of magnitude apart."""
    lines: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        if r.transport in ("http", "grpc"):
            lines.setdefault(f"{r.server} {r.transport}", []).append((r.concurrency, r.rps))
    if not lines:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes = plt.subplots(figsize=(10 if peers else 8, 5))
    for label, points in sorted(lines.items()):
        points.sort()
        axes.plot([c for c, _ in points], [rps for _, rps in points], marker="o", label=label)
    axes.set_xscale("log", base=2)
    if peers:
        axes.set_yscale("log")
        axes.set_xticks(sorted({c for points in lines.values() for c, _ in points}))
        axes.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.set_xlabel("concurrent connections")
    axes.set_ylabel("requests/s (iris, one row per request)")
    what = "each server's own JSON endpoint" if peers else "OIP v2 ModelInfer"
    axes.set_title(f"{what} on {os.cpu_count()} cores")
    axes.grid(True, alpha=0.3)
    # Outside the plot with peers: Ray Serve's line runs where the legend would go.
    axes.legend(**({"loc": "center left", "bbox_to_anchor": (1, 0.5)} if peers else {}))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
