"""The deployment files cannot run here (no Docker, no cluster); check what can be checked: they
parse, every path they copy exists, and their ports, probes and config agree with hostd's."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostd_http.app import create_app

from hostd import plugins
from hostd.configfile import load_settings, parse_settings
from hostd.dataplane import DataPlane
from hostd.observability import Metrics
from hostd.registry import Registry
from hostd.settings import HostSettings

ROOT = Path(__file__).resolve().parent.parent
PORTS = {"http": 8080, "grpc": 8081, "ws": 8765, "zmq": 5555, "zerorpc": 4242}


def known_transports() -> dict[str, Any]:
    return {name: transport.settings for name, transport in plugins.transports(plugins.plugin_manager()).items()}


def http_routes() -> set[str]:
    """Every full path the HTTP app routes, mounted sub-applications included."""
    app = create_app(DataPlane(Registry()), load_settings(ROOT / "host.yaml"))

    def paths(routes: list[Any], prefix: str = "") -> set[str]:
        found = set()
        for route in routes:
            found.add(prefix + route.path)
            found |= paths(getattr(route, "routes", []), prefix + route.path)
        return found

    return paths(app.routes)


def ports_of(settings: HostSettings) -> dict[str, int]:
    transports = settings.transports
    return {"http": transports["http"].port, "grpc": transports["grpc"].port, "ws": transports["ws"].port,
            "zmq": int(transports["zmq"].bind.rsplit(":", 1)[1]),
            "zerorpc": int(transports["zmq"].zerorpc_bind.rsplit(":", 1)[1])}


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize("path", ["Dockerfile", "deploy/lambda/Dockerfile"])
def test_every_path_a_dockerfile_copies_exists(path: str) -> None:
    copies = [args for instruction, args in dockerfile(ROOT / path) if instruction == "COPY"]
    assert copies
    for args in copies:
        if args.startswith("--from"):
            continue
        *sources, _ = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{path}: COPY {source}: no such path in the repository"


def test_the_daemon_image_exposes_every_transport_runs_as_non_root_and_checks_readiness() -> None:
    instructions = dockerfile(ROOT / "Dockerfile")
    settings = load_settings(ROOT / "host.yaml", known_transports())
    exposed = {int(port) for args in (a for i, a in instructions if i == "EXPOSE") for port in args.split()}
    assert exposed == set(ports_of(settings).values())
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    (healthcheck,) = [args for instruction, args in instructions if instruction == "HEALTHCHECK"]
    path = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]+)", healthcheck)
    assert path and int(path.group(1)) == PORTS["http"] and path.group(2) == "/api/health/ready"
    assert path.group(2) in http_routes()


def test_the_daemon_images_environment_makes_every_transport_listen_on_all_interfaces() -> None:
    (env,) = [args for instruction, args in dockerfile(ROOT / "Dockerfile") if instruction == "ENV"]
    environ = dict(pair.split("=", 1) for pair in env.split())
    settings = load_settings(ROOT / "host.yaml", known_transports(), environ=environ)
    transports = settings.transports
    assert transports["http"].host == transports["grpc"].host == transports["ws"].host == "0.0.0.0"
    assert transports["zmq"].bind == "tcp://0.0.0.0:5555" and transports["zmq"].zerorpc_bind == "tcp://0.0.0.0:4242"


def test_the_lambda_image_names_a_handler_that_exists_and_a_valid_config() -> None:
    instructions = dockerfile(ROOT / "deploy/lambda/Dockerfile")
    (cmd,) = [args for instruction, args in instructions if instruction == "CMD"]
    module, _, attribute = yaml.safe_load(cmd)[0].rpartition(".")
    assert importlib.util.find_spec(module) is not None
    assert re.search(rf"^{attribute} = ", Path(importlib.util.find_spec(module).origin or "").read_text(), re.M)
    settings = load_settings(ROOT / "deploy/lambda/host.yaml", known_transports())
    assert [m.class_path for m in settings.models] == [m.class_path for m in load_settings(ROOT / "host.yaml").models]


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict[str, Any]]:
    documents = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/hostd.yaml").read_text()))
    return {document["kind"]: document for document in documents}


def test_the_manifest_has_a_config_a_deployment_a_service_and_an_autoscaler(manifest: dict[str, Any]) -> None:
    assert set(manifest) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}
    deployment = manifest["Deployment"]
    assert deployment["spec"]["selector"]["matchLabels"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert manifest["Service"]["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    target = manifest["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_the_manifests_ports_and_probes_match_its_host_yaml(manifest: dict[str, Any]) -> None:
    settings = parse_settings(manifest["ConfigMap"]["data"]["host.yaml"], "configmap", known_transports())
    pod = manifest["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == ports_of(settings)
    routes = http_routes()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["port"] == "http" and check["path"] in routes
        assert check["scheme"] == "HTTPS" and settings.transports["http"].tls is not None
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/health/ready"
    assert settings.auth is not None and settings.auth.open_health  # the probes carry no key
    assert {port["targetPort"] for port in manifest["Service"]["spec"]["ports"]} <= set(ports)
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_grace_s
    mount = container["volumeMounts"][0]["mountPath"]
    assert container["args"] == [f"{mount}/host.yaml"]


def test_every_secret_host_yaml_names_is_mounted_from_a_secret(manifest: dict[str, Any]) -> None:
    settings = parse_settings(manifest["ConfigMap"]["data"]["host.yaml"], "configmap", known_transports())
    pod = manifest["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = container["volumeMounts"][0]["mountPath"]
    secrets = {volume["name"] for volume in pod["volumes"] if "secret" in volume}
    mounted = [mount["mountPath"] for mount in container["volumeMounts"] if mount["name"] in secrets]
    assert settings.auth is not None
    files = [key.sha256_file for key in settings.auth.keys]
    for name in ("http", "grpc", "ws"):
        tls = settings.transports[name].tls
        files += [tls.cert, tls.key]
    curve = settings.transports["zmq"].curve
    files += [curve.secret_key_file, curve.clients]
    for file in files:
        assert file is not None and any(f"{config}/{file}".startswith(path) for path in mounted), file


def exported_names() -> set[str]:
    """Every sample name hostd's /metrics can show, from a real Metrics registry (a counter's
    _total, a histogram's _bucket, _count and _sum, each with its _created)."""
    suffixes = {"counter": ["_total", "_created"], "gauge": [""],
                "histogram": ["_bucket", "_count", "_sum", "_created"]}
    return {family.name + suffix for family in Metrics().registry.collect() for suffix in suffixes[family.type]}


def grafana_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The panels, those inside collapsed rows too."""
    return [found for panel in panels for found in [panel, *grafana_panels(panel.get("panels", []))]]


def test_the_grafana_dashboard_queries_only_metrics_hostd_exports() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/hostd.json").read_text())
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = grafana_panels(dashboard["panels"])
    assert len({panel["id"] for panel in panels}) == len(panels)
    expressions = [variables["model"]["query"]["query"]]
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            expressions.append(target["expr"])
    exported = exported_names()
    used = {name for expression in expressions for name in re.findall(r"\bhostd_\w+", expression)}
    assert used <= exported, f"not exported by hostd: {sorted(used - exported)}"
    # The panels the dashboard exists for: traffic, errors, latency, batches, queues, cache, models.
    assert {"hostd_requests_total", "hostd_request_duration_seconds_bucket", "hostd_batch_rows_bucket",
            "hostd_pending", "hostd_cache_lookups_total", "hostd_models_loaded"} <= used
