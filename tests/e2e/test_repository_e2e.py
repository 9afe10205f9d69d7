"""Model lifecycle at run time (issue 14) against a real hostd: the repository extension through the real
tritonclient (HTTP and gRPC), SIGHUP, a watched config, and load/unload/reload under load on several
transports at once."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import yaml
import zmq
from tritonclient.utils import InferenceServerException
from websockets.sync.client import connect as ws_connect

from tests.conftest import HOSTD, HostdProcess
from tests.support.e2e import PATIENCE_S, Start, iris_payload, logged, rss_kb, wait_for

pytestmark = pytest.mark.e2e

IRIS = {"class_path": "iris_model.model:IrisModel"}
DIGITS = {"class_path": "digits_model.model:DigitsModel"}


def echo_file(version: str = "1.0.0", factor: float = 2.0) -> dict[str, Any]:
    """A repository file for the toy echo model (its name is a property: the file names it)."""
    return {"class_path": "tests.support.toy:ClosableEcho", "qualified_name": "echo",
            "configuration": {"name": "echo", "version": version, "factor": factor}}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    directory = tmp_path / "repo"
    directory.mkdir()
    (directory / "echo.yaml").write_text(yaml.safe_dump(echo_file()))
    return directory


@pytest.fixture
def lifecycle(start_hostd: Start, repository: Path) -> HostdProcess:
    return start_hostd({"models": [IRIS], "model_repository": "repo", "startup": ["iris_model"],
                        "admin": {"enabled": True}, "transports": {"http": {}, "grpc": {}}})


def grpc_url(server: HostdProcess) -> str:
    return f"127.0.0.1:{server.transports['grpc']['port']}"


@pytest.fixture
def http_client(lifecycle: HostdProcess) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(url=f"127.0.0.1:{lifecycle.port}")
    yield client
    client.close()


@pytest.fixture
def grpc_client(lifecycle: HostdProcess) -> Iterator[triton_grpc.InferenceServerClient]:
    with triton_grpc.InferenceServerClient(url=grpc_url(lifecycle)) as client:
        yield client


def echo_answer(server: HostdProcess, x: float = 1.0) -> tuple[str, float]:
    reply = httpx.post(f"{server.url}/v2/models/echo/infer", timeout=PATIENCE_S, json={
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [x]}]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    (y,) = [output["data"][0] for output in body["outputs"] if output["name"] == "y"]
    return body["model_version"], y


def index(client: Any) -> dict[str, tuple[str, str]]:
    """name -> (version, state) from either tritonclient (HTTP gives dicts, gRPC a message)."""
    models = client.get_model_repository_index()
    entries = models if isinstance(models, list) else models.models
    as_dicts = [entry if isinstance(entry, dict) else {"name": entry.name, "version": entry.version,
                                                       "state": entry.state} for entry in entries]
    return {entry["name"]: (entry["version"], entry["state"]) for entry in as_dicts}


@pytest.mark.parametrize("client_fixture", ["http_client", "grpc_client"])
def test_index_load_unload_and_reload_with_tritonclient(client_fixture: str, lifecycle: HostdProcess,
                                                       repository: Path, request: pytest.FixtureRequest) -> None:
    client = request.getfixturevalue(client_fixture)
    assert index(client) == {"iris_model": ("1.0.0", "READY"), "echo": ("", "UNAVAILABLE")}
    assert not client.is_model_ready("echo")

    client.load_model("echo")
    assert client.is_model_ready("echo")
    assert index(client)["echo"] == ("1.0.0", "READY")
    assert echo_answer(lifecycle) == ("1.0.0", 2.0)

    # A changed repository file, loaded again: the new version serves.
    (repository / "echo.yaml").write_text(yaml.safe_dump(echo_file("1.1.0", factor=3)))
    client.load_model("echo")
    assert echo_answer(lifecycle) == ("1.1.0", 3.0)
    assert index(client)["echo"] == ("1.1.0", "READY")

    client.unload_model("echo")
    assert not client.is_model_ready("echo")
    assert index(client)["echo"] == ("1.1.0", "UNAVAILABLE")
    assert client.is_model_ready("iris_model")


def test_a_failed_load_answers_its_reason_and_changes_nothing(lifecycle: HostdProcess, repository: Path,
                                                             http_client: triton_http.InferenceServerClient,
                                                             grpc_client: triton_grpc.InferenceServerClient) -> None:
    (repository / "broken.yaml").write_text(yaml.safe_dump({"class_path": "tests.support.toy:FailsToLoad",
                                                            "qualified_name": "broken"}))
    lifecycle.proc.send_signal(signal.SIGHUP)  # the repository directory is read again
    wait_for(lambda: "broken" in index(http_client), "the new repository file was never listed")
    with pytest.raises(InferenceServerException, match=r"parameters\.skops is missing"):
        http_client.load_model("broken")
    with pytest.raises(InferenceServerException, match=r"parameters\.skops is missing") as caught:
        grpc_client.load_model("broken")
    assert caught.value.status() == "StatusCode.INTERNAL"
    entry = next(e for e in http_client.get_model_repository_index() if e["name"] == "broken")
    assert entry["state"] == "UNAVAILABLE" and "parameters.skops is missing" in entry["reason"]
    assert http_client.is_model_ready("iris_model")


def test_admin_calls_are_refused_unless_enabled(start_hostd: Start, repository: Path) -> None:
    server = start_hostd({"models": [IRIS], "model_repository": "repo", "transports": {"http": {}, "grpc": {}}})
    reply = httpx.post(f"{server.url}/v2/repository/models/iris_model/unload", timeout=PATIENCE_S)
    assert reply.status_code == 403 and reply.json()["code"] == "FORBIDDEN"
    with triton_grpc.InferenceServerClient(url=grpc_url(server)) as client:
        with pytest.raises(InferenceServerException) as caught:
            client.unload_model("iris_model")
        assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
        assert index(client)["iris_model"] == ("1.0.0", "READY")  # the index is not an admin call


# -- reload without restart ------------------------------------------------------------------------


def rewrite(server: HostdProcess, **changes: Any) -> None:
    """Change the running hostd's config file (its transports, with their ports, stay as they are)."""
    config = yaml.safe_load(server.config.read_text())
    server.config.write_text(yaml.safe_dump({**config, **changes}))


def test_sighup_applies_a_new_config_and_rejects_a_broken_one(start_hostd: Start) -> None:
    server = start_hostd({"models": [IRIS]})
    rewrite(server, models=[IRIS, echo_file()])
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: httpx.get(f"{server.url}/v2/models/echo/ready", timeout=5).status_code == 200,
             "SIGHUP did not load the new model")
    assert echo_answer(server) == ("1.0.0", 2.0)

    broken = server.config.read_text().replace("class_path: tests.support.toy:ClosableEcho",
                                                "class_path: tests.support.toy:ClosableEcho\n  workres: 2")
    server.config.write_text(broken)
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: logged(server, "reload rejected; still serving the previous config") == 1,
             "the broken config was not reported")
    assert "workres: unknown key" in server.output()
    assert echo_answer(server) == ("1.0.0", 2.0)
    assert server.proc.poll() is None


def test_a_watched_config_reloads_when_it_changes(start_hostd: Start) -> None:
    server = start_hostd({"models": [IRIS, echo_file()], "watch": True})
    rewrite(server, models=[IRIS, echo_file("2.0.0", factor=4)])
    wait_for(lambda: echo_answer(server) == ("2.0.0", 4.0), "the changed config was not applied")


def test_a_transport_change_is_refused_over_http(start_hostd: Start) -> None:
    server = start_hostd({"models": [IRIS], "admin": {"enabled": True}})
    rewrite(server, transports={"http": {"port": server.port, "max_connections": 7}})
    reply = httpx.post(f"{server.url}/api/admin/reload", timeout=PATIENCE_S)
    assert reply.status_code == 400, reply.text
    assert "changes transports (http), which needs a restart; nothing was applied" in reply.json()["messages"][0]


def test_reload_over_http_says_what_changed(start_hostd: Start) -> None:
    server = start_hostd({"models": [IRIS], "admin": {"enabled": True}})
    rewrite(server, models=[IRIS, echo_file()])
    reply = httpx.post(f"{server.url}/api/admin/reload", timeout=PATIENCE_S)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"loaded": ["echo"], "reloaded": [], "unloaded": [], "failed": {}}


# -- under load ------------------------------------------------------------------------------------


class Load:
    """Threads predicting iris over HTTP and gRPC, and echo over HTTP, until stopped; every outcome kept."""

    def __init__(self, server: HostdProcess) -> None:
        self.server, self.stopped = server, threading.Event()
        self.iris_failures: list[str] = []
        self.echo_answers: list[tuple[str, float] | str] = []
        self.count = 0
        self.threads = [threading.Thread(target=self._http), threading.Thread(target=self._grpc),
                        threading.Thread(target=self._echo)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(PATIENCE_S)

    def _http(self) -> None:
        with httpx.Client(timeout=PATIENCE_S) as client:
            while not self.stopped.is_set() and self.count < 100_000:
                reply = client.post(f"{self.server.url}/api/models/iris_model/prediction", json=iris_payload())
                self.count += 1
                if reply.status_code != 200:
                    self.iris_failures.append(f"HTTP {reply.status_code} {reply.text}")

    def _grpc(self) -> None:
        data = np.array([list(iris_payload().values())], dtype=np.float32)
        with triton_grpc.InferenceServerClient(url=grpc_url(self.server)) as client:
            tensor = triton_grpc.InferInput("input__0", list(data.shape), "FP32")
            tensor.set_data_from_numpy(data)
            while not self.stopped.is_set() and self.count < 100_000:
                try:
                    client.infer("iris_model", [tensor], client_timeout=PATIENCE_S)
                except InferenceServerException as exc:
                    self.iris_failures.append(f"gRPC {exc}")
                self.count += 1

    def _echo(self) -> None:
        """echo without a version, over the author's API and OIP v2 in turn: (version, y) or the error."""
        v2 = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
        with httpx.Client(timeout=PATIENCE_S) as client:
            while not self.stopped.is_set() and self.count < 100_000:
                reply = client.post(f"{self.server.url}/api/models/echo/prediction", json={"x": 1})
                if reply.status_code == 200:
                    self.echo_answers.append((reply.headers["x-model-version"], reply.json()["y"]))
                else:
                    self.echo_answers.append(f"HTTP {reply.status_code} {reply.text}")
                reply = client.post(f"{self.server.url}/v2/models/echo/infer", json=v2)
                if reply.status_code == 200:
                    body = reply.json()
                    self.echo_answers.append((body["model_version"], body["outputs"][0]["data"][0]))
                else:
                    self.echo_answers.append(f"HTTP {reply.status_code} {reply.text}")


def test_load_unload_and_reload_under_load_lose_nothing(lifecycle: HostdProcess, repository: Path,
                                                       http_client: triton_http.InferenceServerClient) -> None:
    http_client.load_model("echo")
    (repository / "other.yaml").write_text(yaml.safe_dump({**echo_file(), "qualified_name": "other",
                                                           "configuration": {"name": "other"}}))
    lifecycle.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "other" in index(http_client), "other was never listed")
    with Load(lifecycle) as load:
        for round_ in range(1, 4):
            http_client.load_model("other")
            http_client.unload_model("other")
            # A reload to a new version (1.1.0, 1.2.0, 1.3.0) whose factor alternates between 3 and 2.
            (repository / "echo.yaml").write_text(yaml.safe_dump(echo_file(f"1.{round_}.0", 2.0 + round_ % 2)))
            http_client.load_model("echo")
        wait_for(lambda: load.count > 200, "the load threads made no progress")
    assert load.iris_failures == []
    failures = [answer for answer in load.echo_answers if isinstance(answer, str)]
    assert failures == []
    expected = {("1.0.0", 2.0), ("1.1.0", 3.0), ("1.2.0", 2.0), ("1.3.0", 3.0)}
    assert set(load.echo_answers) <= expected and ("1.3.0", 3.0) in load.echo_answers


def test_unloading_digits_returns_its_memory(start_hostd: Start) -> None:
    server = start_hostd({"models": [IRIS, DIGITS], "startup": ["iris_model"], "admin": {"enabled": True}})
    client = triton_http.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    rounds = []
    try:
        # The first round also imports digits_model's modules, which stay (Python does not unload
        # modules); from the second on, a load and an unload are the model alone.
        for _ in range(3):
            before = rss_kb(server.proc.pid)
            client.load_model("digits_model")
            loaded = rss_kb(server.proc.pid)
            client.unload_model("digits_model")
            rounds.append((before, loaded, rss_kb(server.proc.pid)))
    finally:
        client.close()
    print("RSS KB (before load, loaded, after unload) per round:", rounds)
    for before, loaded, after in rounds[1:]:
        assert loaded - before > 2000, rounds  # the 100-tree forest is megabytes
        assert after - before < (loaded - before) / 4, f"unloading kept most of the model's memory: {rounds}"


def test_hostd_reload_reaches_the_running_daemon(start_hostd: Start) -> None:
    server = start_hostd({"models": [IRIS], "admin": {"enabled": True}})
    rewrite(server, models=[IRIS, echo_file()])
    run = subprocess.run([HOSTD, "reload", str(server.config)], capture_output=True, text=True, timeout=PATIENCE_S)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["loaded"] == ["echo"]
    assert echo_answer(server) == ("1.0.0", 2.0)

    # A transport change: the daemon refuses it, and says so.
    rewrite(server, transports={"http": {"port": server.port, "max_connections": 7}})
    run = subprocess.run([HOSTD, "reload", str(server.config)], capture_output=True, text=True, timeout=PATIENCE_S)
    assert run.returncode == 1
    assert "changes transports (http), which needs a restart; nothing was applied" in run.stderr

    # A broken config never reaches the daemon: the command says what is wrong, where.
    broken = server.config.read_text().replace("qualified_name: echo", "qualified_name: echo\n  nope: 1")
    server.config.write_text(broken)
    run = subprocess.run([HOSTD, "reload", str(server.config)], capture_output=True, text=True, timeout=PATIENCE_S)
    assert run.returncode == 2
    assert "nope: unknown key" in run.stderr and "the running hostd goes on serving its current config" in run.stderr
    assert echo_answer(server) == ("1.0.0", 2.0)


# -- every transport sees the same models ----------------------------------------------------------


def over_websocket(server: HostdProcess, request: dict[str, Any]) -> dict[str, Any]:
    with ws_connect(f"ws://127.0.0.1:{server.transports['ws']['port']}", open_timeout=PATIENCE_S) as ws:
        ws.send(json.dumps(request))
        return dict(json.loads(ws.recv(timeout=PATIENCE_S)))


def over_zeromq(server: HostdProcess, request: dict[str, Any]) -> dict[str, Any]:
    context = zmq.Context()
    try:
        with context.socket(zmq.REQ) as socket:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.RCVTIMEO, int(PATIENCE_S * 1000))
            socket.connect(server.transports["zmq"]["bind"])
            socket.send_json(request)
            return dict(socket.recv_json())
    finally:
        context.term()


def test_a_loaded_or_unloaded_model_is_so_on_every_transport(start_hostd: Start, repository: Path) -> None:
    server = start_hostd({"models": [IRIS], "model_repository": "repo", "startup": ["iris_model"],
                          "admin": {"enabled": True}, "transports": {"http": {}, "grpc": {}, "ws": {}, "zmq": {}}})
    request = {"id": "1", "model": "echo", "data": {"x": 4}}
    with triton_grpc.InferenceServerClient(url=grpc_url(server)) as grpc_client:
        for ask in (over_websocket, over_zeromq):
            assert ask(server, request)["error"]["code"] == "MODEL_NOT_FOUND"
        grpc_client.load_model("echo")
        for ask in (over_websocket, over_zeromq):
            reply = ask(server, request)
            assert (reply["version"], reply["prediction"]["y"]) == ("1.0.0", 8.0), reply
        assert echo_answer(server, 4) == ("1.0.0", 8.0)
        assert "/api/models/echo/prediction" in httpx.get(f"{server.url}/openapi.json", timeout=5).json()["paths"]
        grpc_client.unload_model("echo")
        for ask in (over_websocket, over_zeromq):
            assert ask(server, request)["error"]["code"] == "MODEL_NOT_FOUND"
        assert "/api/models/echo/prediction" not in httpx.get(f"{server.url}/openapi.json", timeout=5).json()["paths"]
        assert not grpc_client.is_model_ready("echo")


def test_a_sighup_while_models_load_does_not_end_the_daemon(tmp_path: Path) -> None:
    from tests.conftest import ROOT, wait_ready, with_free_ports

    gate = tmp_path / "gate"
    transports = with_free_ports({"http": {}})
    config = tmp_path / "host.yaml"
    config.write_text(yaml.safe_dump({"models": [{"class_path": "tests.support.toy:SlowToLoad",
                                                  "qualified_name": "echo", "configuration": {"gate": str(gate)}}],
                                      "transports": transports}))
    log = tmp_path / "hostd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([HOSTD, "run", str(config)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    server = HostdProcess(proc, config, transports, log)
    try:
        wait_for(lambda: "open-file limit" in server.output(), "hostd never started loading")
        proc.send_signal(signal.SIGHUP)  # the default action of SIGHUP ends a process
        gate.touch()
        wait_ready(server)
        assert echo_answer(server) == ("1.0.0", 2.0)
    finally:
        proc.kill()
        proc.wait()
