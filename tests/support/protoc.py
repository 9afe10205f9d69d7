"""Compile a .proto with stock protoc (grpcio-tools) and import what it generates, as a user would."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType


def protoc(proto: Path, out: Path) -> None:
    """``python -m grpc_tools.protoc`` with --python_out and --grpc_python_out into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto.parent}", f"--python_out={out}",
         f"--grpc_python_out={out}", proto.name],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, f"protoc rejected {proto.name}:\n{done.stderr}"


def import_generated(proto: Path, out: Path) -> tuple[ModuleType, ModuleType]:
    """Compile ``proto`` and import ``<stem>_pb2`` and ``<stem>_pb2_grpc`` from ``out``.

    The generated code registers its file in protobuf's default pool; importing the same text
    twice is fine, two different files declaring the same symbols are not.
    """
    protoc(proto, out)
    names = [f"{proto.stem}_pb2", f"{proto.stem}_pb2_grpc"]
    sys.path.insert(0, str(out))
    try:
        for name in names:
            sys.modules.pop(name, None)
        messages, services = (importlib.import_module(name) for name in names)
    finally:
        sys.path.remove(str(out))
    return messages, services
