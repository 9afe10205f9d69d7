"""Fixtures: factories that start real hostd processes on free ports and always clean up."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
HOSTD = str(Path(sys.executable).with_name("hostd"))
#: How a server says the port it was given is taken (hostd and its transports, Redis, moto, Tansu).
PORT_TAKEN = re.compile(r"address (already )?in use|AddrInUse|is in use by another program", re.IGNORECASE)
#: Starts on fresh ports before a port conflict fails the test.
PORT_ATTEMPTS = 4
#: Where each transport listens: (transport, setting, the setting's value for a port).
LISTENERS: list[tuple[str, str, Callable[[int], Any]]] = [
    ("http", "port", int), ("grpc", "port", int), ("ws", "port", int),
    ("zmq", "bind", "tcp://127.0.0.1:{}".format), ("zmq", "zerorpc_bind", "tcp://127.0.0.1:{}".format),
]


def free_port() -> int:
    """A port nothing listens on right now. Another process may take it before the server binds it,
    so whoever starts a server on it starts again on a fresh one if it was taken (PORT_TAKEN)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listens(pid: int, port: int) -> bool:
    """Process ``pid`` (or a child of it) listens on TCP ``port``: whatever answers there is that
    process, not another one that took the port first."""
    try:
        parent = psutil.Process(pid)
        processes = [parent, *parent.children(recursive=True)]
        return any(conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
                   for process in processes for conn in process.net_connections("tcp"))
    except psutil.Error:  # gone, or going
        return False


@dataclass
class HostdProcess:
    proc: subprocess.Popen[bytes]
    config: Path
    transports: dict[str, dict[str, Any]]  # the transports section as written, ports filled in
    log: Path

    @property
    def port(self) -> int:
        return int(self.transports["http"]["port"])

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


def wait_ready(server: HostdProcess, timeout: float = 30) -> None:
    """Poll /api/health/ready until this hostd says ready. The timeout only guards against a hang:
    loading models on a loaded machine can take a while."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"hostd exited with {server.proc.returncode}:\n{server.output()}")
        if listens(server.proc.pid, server.port) and _says_ready(server.url):
            return
        time.sleep(0.05)
    raise AssertionError(f"hostd not ready after {timeout}s:\n{server.output()}")


def _says_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/health/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def with_free_ports(transports: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``transports`` with a fresh free port for every listener the test left unset (each transport's
    default port is fixed, so two hostd at once would collide on it)."""
    filled = {name: dict(section or {}) for name, section in transports.items()}
    for name, setting, value in LISTENERS:
        if name in filled and setting not in filled[name]:
            filled[name][setting] = value(free_port())
    return filled


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Callable[[], Path]]:
    """Factory of gates for tests.support.toy:GatedEcho (a request naming one stays in the model until
    the file exists); every one is opened at teardown, so no worker thread outlives the test."""
    made: list[Path] = []

    def gate() -> Path:
        made.append(tmp_path / f"gate-{len(made)}")
        return made[-1]

    yield gate
    for path in made:
        path.touch()


@pytest.fixture
def start_hostd(tmp_path: Path) -> Iterator[Callable[..., HostdProcess]]:
    """Factory: ``start_hostd(config)`` runs ``hostd run`` until it is ready, every listener on a free
    port (``server.transports`` says which). ``config`` is a dict (its transports must include http,
    the default) or the text of a config file without a transports section (HTTP on a port from the
    environment). If a port was taken meanwhile, hostd exits saying so and starts again on fresh ones.
    Every hostd it started is killed when the test ends."""
    with hostd_starter(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def start_shared_hostd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., HostdProcess]]:
    """``start_hostd`` for a hostd the tests of a module share (each start costs seconds): only for
    tests that change nothing another test reads (no metrics counted, no models loaded, no signals)."""
    with hostd_starter(tmp_path_factory.mktemp("shared-hostd")) as start:
        yield start


@contextmanager
def hostd_starter(folder: Path) -> Iterator[Callable[..., HostdProcess]]:
    servers: list[HostdProcess] = []

    def launch(config: dict[str, Any] | str, env: dict[str, str]) -> HostdProcess:
        path, log = folder / f"host-{len(servers)}.yaml", folder / f"hostd-{len(servers)}.log"
        if isinstance(config, str):
            transports = {"http": {"port": free_port()}}
            path.write_text(config)
            env = {**env, "HOSTD_TRANSPORTS__HTTP__PORT": str(transports["http"]["port"])}
        else:
            transports = with_free_ports(config.get("transports") or {"http": {}})
            assert "http" in transports, "start_hostd waits for /api/health/ready: serve http too"
            path.write_text(yaml.safe_dump({**config, "transports": transports}))
        with log.open("wb") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen([HOSTD, "run", str(path)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **env})
        server = HostdProcess(proc, path, transports, log)
        servers.append(server)
        return server

    def start(config: dict[str, Any] | str, *, env: dict[str, str] | None = None) -> HostdProcess:
        attempt = 1
        while True:
            server = launch(config, env or {})
            try:
                wait_ready(server)
                return server
            except AssertionError:
                exited_on_a_taken_port = server.proc.poll() is not None and PORT_TAKEN.search(server.output())
                if attempt == PORT_ATTEMPTS or not exited_on_a_taken_port:
                    raise
                attempt += 1

    try:
        yield start
    finally:
        for server in servers:
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait()
