"""Fixtures: factories that start real hostd processes on free ports and always clean up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
HOSTD = str(Path(sys.executable).with_name("hostd"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class HostdProcess:
    proc: subprocess.Popen[bytes]
    config: Path
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then wait for a clean exit; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_ready(server: HostdProcess, timeout: float = 20) -> float:
    """Poll /api/health/ready; return seconds until it said ready."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.proc.poll() is not None:
            raise AssertionError(f"hostd exited with {server.proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/api/health/ready", timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"hostd not ready after {timeout}s:\n{server.output()}")


@pytest.fixture
def start_hostd(tmp_path: Path) -> Iterator[Callable[..., HostdProcess]]:
    """Factory: ``start_hostd(config_dict)`` runs ``hostd run`` on a free HTTP port until ready."""
    servers: list[HostdProcess] = []

    def start(config: dict[str, Any], *, wait: bool = True, env: dict[str, str] | None = None) -> HostdProcess:
        config = dict(config)
        port = free_port()
        transports = dict(config.get("transports") or {"http": {}})
        if "http" in transports:
            transports["http"] = {**(transports["http"] or {}), "port": port}
        config["transports"] = transports
        path = tmp_path / f"host-{len(servers)}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = tmp_path / f"hostd-{len(servers)}.log"
        with log.open("wb") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen([HOSTD, "run", str(path)], cwd=ROOT, stdout=out,
                                    stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        server = HostdProcess(proc, path, port, log)
        servers.append(server)
        if wait:
            wait_ready(server)
        return server

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
