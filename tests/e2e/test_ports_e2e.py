"""hostd run with an address already taken: the error names the address and how to choose another."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import HOSTD, ROOT, free_port
from tests.support.e2e import Start, echo

pytestmark = pytest.mark.e2e


@pytest.fixture
def taken() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def run(tmp_path: Path, transports: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "host.yaml"
    config.write_text(yaml.safe_dump({"models": [echo()], "transports": transports}))
    env = {name: value for name, value in os.environ.items() if not name.startswith("HOSTD_")}
    return subprocess.run([HOSTD, "run", str(config)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


CASES = {
    "http": lambda port: ({"http": {"port": port}}, "http", "port", f"127.0.0.1:{port}"),
    "http-uvicorn": lambda port: ({"http": {"port": port, "server": "uvicorn"}}, "http", "port", f"127.0.0.1:{port}"),
    "grpc": lambda port: ({"grpc": {"port": port}}, "grpc", "port", f"127.0.0.1:{port}"),
    "ws": lambda port: ({"ws": {"port": port}}, "ws", "port", f"127.0.0.1:{port}"),
    "zmq": lambda port: ({"zmq": {"bind": f"tcp://127.0.0.1:{port}", "zerorpc_bind": None}}, "zmq", "bind",
                         f"tcp://127.0.0.1:{port}"),
    "zerorpc": lambda port: ({"zmq": {"bind": f"tcp://127.0.0.1:{free_port()}",
                                      "zerorpc_bind": f"tcp://127.0.0.1:{port}"}}, "zmq", "zerorpc_bind",
                             f"tcp://127.0.0.1:{port}"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_taken_address_is_named_with_the_setting_and_variable_that_change_it(case: str, taken: int,
                                                                               tmp_path: Path) -> None:
    transports, name, key, address = CASES[case](taken)
    done = run(tmp_path, transports)
    assert done.returncode == 1, done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert error.startswith(f"Error: transport '{name}' failed to start: cannot listen on {address} "
                            "(Address already in use)"), error
    assert f"transports.{name}.{key} ({tmp_path / 'host.yaml'}:" in error, error
    assert f"HOSTD_TRANSPORTS__{name.upper()}__{key.upper()}" in error, error


def test_the_variable_the_error_names_moves_the_transport(start_hostd: Start, taken: int) -> None:
    moved = free_port()
    server = start_hostd({"models": [echo()], "transports": {"http": {}, "ws": {"port": taken}}},
                         env={"HOSTD_TRANSPORTS__WS__PORT": str(moved)})
    with socket.create_connection(("127.0.0.1", moved), timeout=5):
        pass  # the WebSocket transport listens where the variable says
    assert server.stop() == 0
