"""`--vs all`: hostd (default config, its author API) and every peer serve the same iris row, each at
its own JSON endpoint, and wrk loads them in turns at each concurrency, so a drift of the machine hits
them all. A peer that cannot be installed or started, or fails during a run, is recorded as skipped,
with the reason. Peers that idle quietly share one phase; a busy one (Ray Serve) gets a phase of its
own after it, beside a hostd started afresh, and is compared with that hostd."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import Result, free_port, start_hostd
from benchmarks.oip_infer import wrk
from benchmarks.peers import Peer
from benchmarks.peers.process import ROW_JSON

HOSTD_PATH = "/api/models/iris_model/prediction"
HOSTD_ENDPOINT = f"POST {HOSTD_PATH}, the row as JSON (author API)"
SHARED = "shared"  # the phase every peer without own_phase is in
# wrk gives up on a request after 2 s by default and leaves latencies past that out of its percentiles;
# a server that slow would look better than it is, so every server in the comparison gets this long.
TIMEOUT_S = 10


@dataclass
class Comparison:
    skipped: list[dict[str, str]] = field(default_factory=list)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, peer: str, why: str, error: BaseException) -> None:
        reason = f"{why}: {type(error).__name__}: {error}".strip()
        self.skipped.append({"peer": peer, "skipped": reason})
        print(f"skipped {peer}: {reason}", flush=True)


def compare(peers: Sequence[Peer], concurrency: list[int], seconds: int, workdir: Path,
            record: Callable[[Result], None]) -> Comparison:
    """Install every peer (once), then measure hostd and them, phase by phase; ``record`` gets each run."""
    comparison = Comparison()
    installed = []
    for peer in peers:
        try:
            peer.install()
        except Exception as error:  # whatever it was, the peer is listed with it
            comparison.skip(peer.name, "install failed", error)
        else:
            installed.append(peer)
    for phase, members in phases(installed):
        _run_phase(comparison, phase, members, concurrency, seconds, workdir, record)
    return comparison


def phases(peers: Sequence[Peer]) -> list[tuple[str, list[Peer]]]:
    """The shared phase (hostd is measured in it even with no peer), then one per own_phase peer."""
    return [(SHARED, [p for p in peers if not p.own_phase]), *[(p.name, [p]) for p in peers if p.own_phase]]


def hostd_label(phase: str) -> str:
    return "hostd" if phase == SHARED else f"hostd ({phase} phase)"


def _run_phase(comparison: Comparison, phase: str, members: list[Peer], concurrency: list[int], seconds: int,
               workdir: Path, record: Callable[[Result], None]) -> None:
    hostd_port = free_port()
    with ExitStack() as running:
        running.enter_context(start_hostd({"http": {"port": hostd_port}}))
        hostd = hostd_label(phase)
        targets = {hostd: (f"http://127.0.0.1:{hostd_port}{HOSTD_PATH}", ROW_JSON)}
        for peer in members:
            try:
                targets[peer.name] = running.enter_context(peer.start(free_port()))
            except Exception as error:
                comparison.skip(peer.name, "did not start", error)
        # What the machine does with every server of the phase up and no load (other users included).
        idle = psutil.cpu_percent(interval=2) * (os.cpu_count() or 1)
        comparison.phases.append({"phase": phase, "servers": list(targets), "idle_cpu_percent_of_one_core": idle})
        print(f"phase {phase}: {', '.join(targets)}; machine busy {idle:.0f}% of a core before the loads", flush=True)
        for connections in concurrency:
            turn = {}
            for server, (url, body) in list(targets.items()):
                try:
                    turn[server] = wrk(url, body, connections, seconds, workdir, server=server, timeout_s=TIMEOUT_S)
                except Exception as error:
                    if server == hostd:
                        raise
                    comparison.skip(server, f"failed at {connections} connections", error)
                    del targets[server]
                    continue
                record(turn[server])
            comparison.ratios += [ratio(turn[hostd], run) for server, run in turn.items() if server != hostd]


def ratio(hostd: Result, peer: Result) -> dict[str, Any]:
    """hostd over ``peer`` at one concurrency: above 1 is better for requests/s, below 1 for latencies;
    hostd is ahead when it is better in all three."""
    rps, p50, p99 = _over(hostd.rps, peer.rps), _over(hostd.p50_ms, peer.p50_ms), _over(hostd.p99_ms, peer.p99_ms)
    ahead = rps is not None and p50 is not None and p99 is not None and rps > 1 and p50 < 1 and p99 < 1
    return {"server": hostd.server, "vs": peer.server, "transport": peer.transport, "concurrency": peer.concurrency,
            "rps_ratio": rps, "p50_ratio": p50, "p99_ratio": p99, "hostd_ahead": ahead}


def _over(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return float(f"{numerator / denominator:.3g}")
