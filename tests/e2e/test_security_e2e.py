"""TLS, mutual TLS, API keys with scopes and rate limits (issue 15) against a real hostd, with the clients
users have: curl, tritonclient (HTTP and gRPC), grpcio, websockets. Certificates are made at test time
(trustme); no private key is committed."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import trustme
import yaml
import zmq
import zmq.auth
from tritonclient.utils import InferenceServerException
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.conftest import HOSTD, ROOT, HostdProcess, with_free_ports
from tests.support.e2e import PATIENCE_S, Start, iris_payload, problems_logged

pytestmark = pytest.mark.e2e

KEYS = {"reader": ["read"], "predictor": ["infer"], "admin": ["admin", "read", "infer"], "iris_reader": ["read"]}
ONLY_IRIS = ("predictor", "iris_reader")  # keys with a model allow-list: iris_model
IRIS = {"class_path": "iris_model.model:IrisModel"}
DIABETES = {"class_path": "diabetes_model.model:DiabetesModel"}


@dataclass
class Certs:
    folder: Path
    ca: trustme.CA

    @property
    def ca_file(self) -> str:
        return str(self.folder / "ca.pem")

    def client_context(self, client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if client_cert:
            context.load_cert_chain(self.folder / "client.pem", self.folder / "client.key")
        return context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    client = ca.issue_cert("client@hostd.test")
    client.cert_chain_pems[0].write_to_path(str(folder / "client.pem"))
    client.private_key_pem.write_to_path(str(folder / "client.key"))
    for key in ("server.key", "client.key"):
        os.chmod(folder / key, 0o600)
    return Certs(folder, ca)


def tls(certs: Certs, **extra: Any) -> dict[str, Any]:
    return {"cert": str(certs.folder / "server.pem"), "key": str(certs.folder / "server.key"), **extra}


def key_of(name: str) -> str:
    return f"test-key-{name}"


def auth(**extra: Any) -> dict[str, Any]:
    keys = [{"name": name, "sha256": hashlib.sha256(key_of(name).encode()).hexdigest(), "scopes": scopes}
            for name, scopes in KEYS.items()]
    for key in keys:
        if key["name"] in ONLY_IRIS:
            key["models"] = ["iris_model"]
    return {"keys": keys, **extra}


@pytest.fixture(scope="module")
def secure(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostdProcess]:
    """One hostd for the module: TLS on HTTP, gRPC and WebSocket, API keys, admin calls on."""
    transports = {name: {"tls": tls(certs)} for name in ("http", "grpc", "ws")}
    server = launch({"models": [IRIS, DIABETES], "auth": auth(), "admin": {"enabled": True}, "transports": transports},
                    tmp_path_factory.mktemp("secure"), certs)
    try:
        yield server
    finally:
        server.proc.kill()
        server.proc.wait()
    assert "test-key-" not in server.output()  # no key is ever logged
    # Clients that failed TLS or authentication are the clients' problem: nothing at error level.
    assert problems_logged(server.output()) == []


def wait_until_serving(server: HostdProcess, certs: Certs) -> None:
    """Ready once its HTTPS port answers ready to a client with a certificate (mutual TLS or not)."""
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.output()
        try:
            reply = httpx.get(https(server, "/api/health/ready"), verify=certs.client_context(client_cert=True),
                              timeout=1)
            if reply.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"hostd not ready:\n{server.output()}")


def launch(config: dict[str, Any], folder: Path, certs: Certs) -> HostdProcess:
    """``hostd run`` on ``config`` (every listener on a free port) until it serves over HTTPS."""
    transports = with_free_ports(config["transports"])
    path = folder / f"host-{len(list(folder.glob('host-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({**config, "transports": transports}))
    log = path.with_suffix(".log")
    with log.open("wb") as out:
        proc = subprocess.Popen([HOSTD, "run", str(path)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    server = HostdProcess(proc, path, transports, log)
    try:
        wait_until_serving(server, certs)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return server


def https(server: HostdProcess, path: str) -> str:
    return f"https://127.0.0.1:{server.port}{path}"


def curl(certs: Certs, *args: str) -> tuple[int, dict[str, str], str]:
    """curl with the test CA: status, headers (lower-case names), body."""
    run = subprocess.run(["curl", "-s", "-i", "--cacert", certs.ca_file, "--max-time", "20", *args],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    head, _, body = run.stdout.replace("\r\n", "\n").partition("\n\n")
    status_line, *lines = head.splitlines()
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


# -- HTTP ------------------------------------------------------------------------------------------


def test_curl_over_https_with_and_without_the_right_key(secure: HostdProcess, certs: Certs) -> None:
    predict = https(secure, "/api/models/iris_model/prediction")
    body = json.dumps(iris_payload())

    def post(url: str, key: str | None, data: str = body) -> tuple[int, dict[str, str], str]:
        return curl(certs, "-X", "POST", url, "-d", data, *(["-H", f"Authorization: Bearer {key}"] if key else []))

    refused = [post(predict, None), post(predict, "wrong"), post(predict, key_of("reader")),
               post(https(secure, "/api/models/diabetes_model/prediction"), key_of("predictor"), "{}")]
    assert [status for status, _, _ in refused] == [401, 401, 403, 403]
    (_, headers, no_key), (_, _, wrong), (_, _, no_scope), (_, _, no_model) = refused
    assert headers["www-authenticate"] == 'Bearer realm="hostd"'
    assert json.loads(no_key)["type"] == "UNAUTHENTICATED" and "not valid" in wrong
    assert "lacks the 'infer' scope" in no_scope and "may not use model 'diabetes_model'" in no_model
    for _, _, reply in refused:  # no traceback, file path or key in any of them
        assert "Traceback" not in reply and ".py" not in reply and "/tmp" not in reply and "test-key-" not in reply
        assert "wrong" not in reply
    status, _, reply = post(predict, key_of("predictor"))
    assert (status, json.loads(reply)) == (200, {"species": "Iris setosa"})


def test_health_is_open_and_metrics_and_docs_need_the_read_scope(secure: HostdProcess, certs: Certs) -> None:
    assert curl(certs, https(secure, "/api/health/ready"))[0] == 200
    assert curl(certs, https(secure, "/v2/health/live"))[0] == 200
    for path in ("/metrics", "/openapi.json", "/api/models", "/v2/models/iris_model"):
        assert curl(certs, https(secure, path))[0] == 401, path
        assert curl(certs, https(secure, path), "-H", f"Authorization: Bearer {key_of('reader')}")[0] == 200, path


def test_a_key_with_a_model_allow_list_sees_only_those_models(secure: HostdProcess, certs: Certs) -> None:
    def models(key: str, path: str = "/api/models") -> list[str]:
        status, _, reply = curl(certs, https(secure, path), "-H", f"Authorization: Bearer {key_of(key)}")
        assert status == 200, reply
        return sorted(model["qualified_name"] for model in json.loads(reply)["models"])

    assert models("reader") == ["diabetes_model", "iris_model"]
    assert models("iris_reader") == ["iris_model"]
    status, _, reply = curl(certs, "-X", "POST", https(secure, "/v2/repository/index"),
                            "-H", f"Authorization: Bearer {key_of('iris_reader')}")
    assert status == 200 and {entry["name"] for entry in json.loads(reply)} == {"iris_model"}
    status, _, reply = curl(certs, https(secure, "/api/models/diabetes_model/metadata"),
                            "-H", f"Authorization: Bearer {key_of('iris_reader')}")
    assert status == 403 and "may not use model 'diabetes_model'" in reply


def test_admin_calls_need_the_admin_scope(secure: HostdProcess, certs: Certs) -> None:
    index = https(secure, "/v2/repository/index")
    assert curl(certs, "-X", "POST", index, "-H", f"Authorization: Bearer {key_of('reader')}")[0] == 200
    load = https(secure, "/v2/repository/models/iris_model/load")
    status, _, reply = curl(certs, "-X", "POST", load, "-H", f"Authorization: Bearer {key_of('reader')}")
    assert status == 403 and json.loads(reply)["code"] == "FORBIDDEN"
    assert curl(certs, "-X", "POST", load, "-H", f"Authorization: Bearer {key_of('admin')}")[0] == 200


def test_tritonclient_http_with_ssl(secure: HostdProcess, certs: Certs) -> None:
    client = triton_http.InferenceServerClient(url=f"127.0.0.1:{secure.port}", ssl=True,
                                               ssl_context_factory=lambda: certs.client_context())
    try:
        features = triton_http.InferInput("input__0", [1, 4], "FP32")
        features.set_data_from_numpy(np.array([list(iris_payload().values())], dtype=np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("iris_model", [features])
        assert "API key is required" in str(caught.value)
        result = client.infer("iris_model", [features], headers={"Authorization": f"Bearer {key_of('predictor')}"})
        assert [s.decode() for s in result.as_numpy("species")] == ["Iris setosa"]
    finally:
        client.close()


def test_a_plaintext_client_on_the_tls_port_fails_cleanly(secure: HostdProcess, certs: Certs) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{secure.port}/api/health", timeout=5)
    with socket.create_connection(("127.0.0.1", int(secure.transports["grpc"]["port"])), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # plaintext HTTP/2 to the TLS gRPC port
        sock.recv(1024)  # the server answers (a TLS alert) or closes; either way it goes on
    assert curl(certs, https(secure, "/api/health/ready"))[0] == 200
    assert secure.proc.poll() is None


# -- gRPC ------------------------------------------------------------------------------------------


def iris_tensor() -> triton_grpc.InferInput:
    features = triton_grpc.InferInput("input__0", [1, 4], "FP32")
    features.set_data_from_numpy(np.array([list(iris_payload().values())], dtype=np.float32))
    return features


def test_tritonclient_grpc_with_ssl_and_keys(secure: HostdProcess, certs: Certs) -> None:
    url = f"127.0.0.1:{secure.transports['grpc']['port']}"
    with triton_grpc.InferenceServerClient(url=url, ssl=True, root_certificates=certs.ca_file) as client:
        assert client.is_server_live()  # health: open
        cases = [(None, "StatusCode.UNAUTHENTICATED"), ("wrong", "StatusCode.UNAUTHENTICATED"),
                 (key_of("reader"), "StatusCode.PERMISSION_DENIED")]
        for key, status in cases:
            headers = {"authorization": f"Bearer {key}"} if key else None
            with pytest.raises(InferenceServerException) as caught:
                client.infer("iris_model", [iris_tensor()], headers=headers)
            assert caught.value.status() == status, caught.value
            assert "wrong" not in str(caught.value)
        result = client.infer("iris_model", [iris_tensor()], headers={"authorization": f"Bearer {key_of('predictor')}"})
        assert [s.decode() for s in result.as_numpy("species")] == ["Iris setosa"]
        with pytest.raises(InferenceServerException) as caught:
            client.unload_model("iris_model", headers={"authorization": f"Bearer {key_of('predictor')}"})
        assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
        index = client.get_model_repository_index(headers={"authorization": f"Bearer {key_of('iris_reader')}"})
        assert [entry.name for entry in index.models] == ["iris_model"]  # its allow-list only


def test_grpcio_with_ssl_channel_credentials(secure: HostdProcess, certs: Certs) -> None:
    from grpclib.health.v1 import health_pb2
    from grpclib.reflection.v1alpha import reflection_pb2
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=Path(certs.ca_file).read_bytes())
    reader = [("authorization", f"Bearer {key_of('reader')}")]
    with grpc.secure_channel(f"127.0.0.1:{secure.transports['grpc']['port']}", credentials) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="iris_model"), timeout=10, metadata=reader)
        assert reply.name == "iris_model"
        # Health stays open to probes; reflection (it names every model) needs the read scope.
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                    response_deserializer=health_pb2.HealthCheckResponse.FromString)
        assert check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        Request = reflection_pb2.ServerReflectionRequest
        info = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                     request_serializer=Request.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        with pytest.raises(grpc.RpcError) as caught:
            list(info(iter([Request(list_services="")]), timeout=10))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        (listed,) = list(info(iter([Request(list_services="")]), timeout=10, metadata=reader))
        assert "inference.GRPCInferenceService" in {s.name for s in listed.list_services_response.service}


# -- WebSocket -------------------------------------------------------------------------------------


def test_websocket_over_tls_needs_a_key_at_the_handshake(secure: HostdProcess, certs: Certs) -> None:
    url = f"wss://127.0.0.1:{secure.transports['ws']['port']}"
    for refused in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(InvalidStatus) as caught:
            ws_connect(url, ssl=certs.client_context(), additional_headers=refused, open_timeout=PATIENCE_S)
        assert caught.value.response.status_code == 401
        assert caught.value.response.headers["WWW-Authenticate"] == 'Bearer realm="hostd"'
    reader = {"Authorization": f"Bearer {key_of('reader')}"}
    with ws_connect(url, ssl=certs.client_context(), additional_headers=reader, open_timeout=PATIENCE_S) as ws:
        ws.send(json.dumps({"id": "1", "model": "iris_model", "data": iris_payload()}))
        assert json.loads(ws.recv(timeout=PATIENCE_S))["error"]["code"] == "FORBIDDEN"
        ws.send(json.dumps({"id": "2", "op": "models"}))
        assert "models" in json.loads(ws.recv(timeout=PATIENCE_S))
    headers = {"Authorization": f"Bearer {key_of('predictor')}"}
    with ws_connect(url, ssl=certs.client_context(), additional_headers=headers, open_timeout=PATIENCE_S) as ws:
        ws.send(json.dumps({"id": "1", "model": "iris_model", "data": iris_payload()}))
        assert json.loads(ws.recv(timeout=PATIENCE_S))["prediction"] == {"species": "Iris setosa"}
        ws.send(json.dumps({"id": "2", "model": "diabetes_model", "data": {}}))
        reply = json.loads(ws.recv(timeout=PATIENCE_S))
        assert reply["error"]["code"] == "FORBIDDEN" and "diabetes_model" in reply["error"]["message"]


# -- mutual TLS and rate limits --------------------------------------------------------------------


def test_mutual_tls_refuses_a_client_without_a_certificate(start_hostd_tls: Any, certs: Certs) -> None:
    server = start_hostd_tls({"models": [IRIS], "transports": {"http": {"tls": tls(
        certs, client_ca=certs.ca_file, require_client_cert=True)}}})
    run = subprocess.run(["curl", "-s", "--cacert", certs.ca_file, "--max-time", "10", https(server, "/api/health")],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode != 0  # the handshake fails: no client certificate
    status, _, _ = curl(certs, "--cert", str(certs.folder / "client.pem"), "--key", str(certs.folder / "client.key"),
                        https(server, "/api/health"))
    assert status == 200


def test_rate_limit_answers_429_with_retry_after(start_hostd_tls: Any, certs: Certs) -> None:
    server = start_hostd_tls({"models": [IRIS], "auth": auth(), "rate_limit": {"per_s": 0.5, "burst": 2},
                              "transports": {"http": {"tls": tls(certs)}}})
    predict = https(server, "/api/models/iris_model/prediction")
    headers = ["-H", f"Authorization: Bearer {key_of('predictor')}"]
    statuses = [curl(certs, "-X", "POST", predict, "-d", json.dumps(iris_payload()), *headers) for _ in range(3)]
    assert [status for status, _, _ in statuses] == [200, 200, 429]
    _, headers_429, body = statuses[2]
    assert int(headers_429["retry-after"]) >= 1 and json.loads(body)["type"] == "RATE_LIMITED"
    # Another key has its own bucket.
    assert curl(certs, https(server, "/metrics"), "-H", f"Authorization: Bearer {key_of('reader')}")[0] == 200


@pytest.fixture
def start_hostd_tls(tmp_path: Path, certs: Certs) -> Iterator[Any]:
    """Like start_hostd, for a hostd whose HTTP transport speaks TLS."""
    started: list[HostdProcess] = []

    def start(config: dict[str, Any]) -> HostdProcess:
        started.append(launch(config, tmp_path, certs))
        return started[-1]

    yield start
    for server in started:
        server.proc.kill()
        server.proc.wait()


# -- ZeroMQ CURVE ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def curve_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """server.key_secret; clients/{predictor,reader}.key allowed; stranger.key_secret not allowed."""
    folder = tmp_path_factory.mktemp("curve")
    (folder / "clients").mkdir()
    zmq.auth.create_certificates(folder, "server")
    for name in ("predictor", "reader", "stranger"):
        zmq.auth.create_certificates(folder, name)
        if name != "stranger":
            (folder / f"{name}.key").rename(folder / "clients" / f"{name}.key")
    return folder


def curve_request(endpoint: str, folder: Path, client: str | None, request: dict[str, Any],
                  wait_s: float = PATIENCE_S) -> dict[str, Any] | None:
    """One REQ round trip as CURVE client ``client`` (None: plaintext); None if no reply came in ``wait_s``."""
    server_public, _ = zmq.auth.load_certificate(folder / "server.key")
    context = zmq.Context()
    try:
        with context.socket(zmq.REQ) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, int(wait_s * 1000))
            if client is not None:
                public, secret = zmq.auth.load_certificate(folder / f"{client}.key_secret")
                sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, server_public
            sock.connect(endpoint)
            sock.send_json(request)
            try:
                return dict(sock.recv_json())
            except zmq.Again:
                return None
    finally:
        context.term()


def test_zeromq_curve_admits_only_allowed_clients_with_their_key_scopes(start_hostd: Start, curve_keys: Path) -> None:
    server = start_hostd({"models": [IRIS], "auth": {"keys": [
        {"name": "predictor", "sha256": "0" * 64, "scopes": ["infer"]},
        {"name": "reader", "sha256": "1" * 64, "scopes": ["read"]}]},
        "transports": {"http": {}, "zmq": {"zerorpc_bind": None, "curve": {
            "secret_key_file": str(curve_keys / "server.key_secret"), "clients": str(curve_keys / "clients")}}}})
    endpoint = server.transports["zmq"]["bind"]
    request = {"id": "1", "model": "iris_model", "data": iris_payload()}
    assert curve_request(endpoint, curve_keys, "predictor", request) == {
        "id": "1", "model": "iris_model", "version": "1.0.0", "prediction": {"species": "Iris setosa"}}
    reply = curve_request(endpoint, curve_keys, "reader", request)
    assert reply is not None and reply["error"]["code"] == "FORBIDDEN"
    assert curve_request(endpoint, curve_keys, "reader", {"op": "models"}) is not None
    # Not allowed, or not CURVE at all: the handshake fails and nothing is answered.
    assert curve_request(endpoint, curve_keys, "stranger", request, wait_s=1) is None
    assert curve_request(endpoint, curve_keys, None, request, wait_s=1) is None
    assert curve_request(endpoint, curve_keys, "predictor", request) is not None  # still serving


# -- arq over TLS to a Redis with a password ------------------------------------------------------


def test_arq_over_tls_to_redis_with_a_password(start_hostd: Start, certs: Certs, tmp_path: Path) -> None:
    import anyio
    from arq import create_pool
    from arq.connections import RedisSettings
    from hostd_arq.serializer import deserialize_errors, serialize

    from tests.e2e.brokers import Service

    def command(port: int) -> list[str]:
        return ["redis-server", "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port),
                "--tls-cert-file", str(certs.folder / "server.pem"), "--tls-key-file", str(certs.folder / "server.key"),
                "--tls-ca-cert-file", certs.ca_file, "--tls-auth-clients", "no", "--requirepass", "redis-s3cret",
                "--save", "", "--appendonly", "no"]

    redis = Service("redis-tls", command, tmp_path / "redis-tls.log")
    redis.start(fresh_port_if_taken=True)
    try:
        (tmp_path / "redis.password").write_text("redis-s3cret\n")
        server = start_hostd({"models": [IRIS], "transports": {"http": {}, "arq": {
            "redis_url": f"rediss://127.0.0.1:{redis.port}/0", "queue_name": "secure",
            "redis_password_file": str(tmp_path / "redis.password"), "ssl_ca_certs": certs.ca_file}}})

        async def predict() -> Any:
            pool = await create_pool(RedisSettings(host="127.0.0.1", port=redis.port, ssl=True, password="redis-s3cret",
                                                   ssl_ca_certs=certs.ca_file, conn_timeout=5),
                                     job_serializer=serialize, job_deserializer=deserialize_errors)
            try:
                job = await pool.enqueue_job("predict", "iris_model", iris_payload(), _queue_name="secure")
                assert job is not None
                return await job.result(timeout=PATIENCE_S)
            finally:
                await pool.aclose()

        assert anyio.run(predict) == {"species": "Iris setosa"}
        assert server.proc.poll() is None
    finally:
        redis.kill()


def test_hypercorn_serves_https_and_http2_by_alpn_and_checks_keys(start_hostd_tls: Any, certs: Certs) -> None:
    server = start_hostd_tls({"models": [IRIS], "auth": auth(),
                              "transports": {"http": {"server": "hypercorn", "tls": tls(certs)}}})
    predict = https(server, "/api/models/iris_model/prediction")
    assert curl(certs, "-X", "POST", predict, "-d", json.dumps(iris_payload()))[0] == 401
    with httpx.Client(http2=True, verify=certs.client_context(), timeout=PATIENCE_S) as client:
        reply = client.post(predict, json=iris_payload(), headers={"Authorization": f"Bearer {key_of('predictor')}"})
    assert (reply.http_version, reply.status_code, reply.json()) == ("HTTP/2", 200, {"species": "Iris setosa"})


def test_hostd_reload_over_https_with_an_admin_key(secure: HostdProcess, certs: Certs) -> None:
    def reload(key: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([HOSTD, "reload", str(secure.config), "--cacert", certs.ca_file], capture_output=True,
                              text=True, timeout=PATIENCE_S, env={**os.environ, "HOSTD_API_KEY": key_of(key)})

    done = reload("admin")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"loaded": [], "reloaded": [], "unloaded": [], "failed": {}}
    refused = reload("reader")
    assert refused.returncode == 1 and "lacks the 'admin' scope" in refused.stderr
