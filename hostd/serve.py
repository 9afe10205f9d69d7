"""``hostd serve PATH_OR_CLASS``: one model file, or one model class, served with sensible defaults and
no host.yaml. The config is made here, in memory, and validated and run exactly as ``hostd run``
would run a file holding it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hostd.errors import ConfigError
from hostd.runtimes import BY_EXTENSION, MLFLOW, runtime_for

#: The transports ``hostd serve`` can start with no more than a port (Kafka and arq need a broker).
TRANSPORTS = ("http", "grpc", "ws", "zmq")
SOURCE = "hostd serve"  # what config errors name instead of a file


def config(target: str, *, name: str | None = None, host: str = "127.0.0.1", port: int = 8080,
           transports: Sequence[str] = ("http", "grpc"), trust: bool = False) -> dict[str, Any]:
    """The host.yaml ``hostd serve`` runs: the model, and each transport on the next port from ``port``."""
    unknown = sorted(set(transports) - set(TRANSPORTS))
    if unknown:
        raise ConfigError(f"{SOURCE}: --transports: {', '.join(unknown)} cannot be served without a config "
                          f"(a broker's address is needed); choose from {', '.join(TRANSPORTS)}, or write a host.yaml")
    if "http" not in transports:
        raise ConfigError(f"{SOURCE}: --transports must include http (health checks and the ready signal)")
    sections: dict[str, Any] = {}
    for offset, transport in enumerate(t for t in TRANSPORTS if t in transports):
        sections[transport] = {"bind": f"tcp://{host}:{port + offset}", "zerorpc_bind": None} \
            if transport == "zmq" else {"host": host, "port": port + offset}
    return {"models": [model_entry(target, name, trust)], "transports": sections}


def model_entry(target: str, name: str | None, trust: bool) -> dict[str, Any]:
    """A runtime for a model file (chosen by its extension), or the model class ``package.module:Class``."""
    runtime = runtime_for(target)
    if runtime is not None and (Path(target).exists() or ":" not in target):
        configuration: dict[str, Any] = {"uri": str(Path(target).resolve())}
        if name:
            configuration["name"] = name
        if trust or runtime == MLFLOW:
            configuration["trust"] = trust
        return {"class_path": runtime, "configuration": configuration}
    if ":" in target:
        return {"class_path": target, **({"qualified_name": name} if name else {})}
    raise ConfigError(f"{SOURCE}: {target} is neither a model file hostd knows ({', '.join(BY_EXTENSION)}, an MLflow "
                      "model directory) nor a model class (package.module:Class)")


def banner(served: Any, sections: dict[str, Any]) -> str:
    """What ``hostd serve`` prints once ready: where each transport listens and a request to paste."""
    http = sections["http"]
    base = f"http://{http['host']}:{http['port']}"
    fields = served.model.input_schema.model_json_schema().get("properties", {})
    example = {field: spec.get("minimum", 0.0) for field, spec in fields.items()}  # a value the schema accepts
    lines = [f"hostd is serving {served.name} {served.version}",
             f"  HTTP   {base}  (API docs: {base}/docs; OIP v2: {base}/v2/models/{served.name})"]
    if "grpc" in sections:
        lines.append(f"  gRPC   {sections['grpc']['host']}:{sections['grpc']['port']}  (OIP v2 and a typed service)")
    if "ws" in sections:
        lines.append(f"  WebSocket ws://{sections['ws']['host']}:{sections['ws']['port']}")
    if "zmq" in sections:
        lines.append(f"  ZeroMQ {sections['zmq']['bind']}")
    lines += ["Try it:",
              f"  curl -X POST {base}/api/models/{served.name}/prediction -H 'Content-Type: application/json' "
              f"-d '{json.dumps(example)}'",
              "Ctrl-C stops it."]
    return "\n".join(lines)
