"""Other model servers serving hostd's iris estimator, each at its own idiomatic single-row JSON
endpoint, for `python -m benchmarks --vs all` (and MLServer alone for `--vs mlserver`).

Each peer is installed once into .bench/<name>-venv (pinned; scikit-learn, numpy and joblib pinned to
ours, since the estimator is pickled here and loaded there) and started on 127.0.0.1 in a process group
of its own, which is stopped whole. `python -m benchmarks.peers [NAME ...]` installs, starts and asks
each one once.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from benchmarks.peers import bentoml, litserve, mlserver, ray_serve, rest_model_service
from benchmarks.peers.process import ensure_venv


@dataclass(frozen=True)
class Peer:
    name: str
    version: str
    endpoint: str  # what it is sent, in its own words
    requirements: list[str]
    start: Callable[[int], AbstractContextManager[tuple[str, bytes]]]  # port -> (url, body) while it runs
    own_phase: bool = False  # too busy when idle to share the machine: measured beside hostd alone

    @classmethod
    def of(cls, module: ModuleType, start: Callable[[int], AbstractContextManager[tuple[str, bytes]]],
           own_phase: bool = False) -> Peer:
        return cls(module.NAME, module.VERSION, module.ENDPOINT, module.REQUIREMENTS, start, own_phase)

    def install(self) -> Path:
        return ensure_venv(self.name, self.requirements)


PEERS = (
    Peer.of(mlserver, mlserver.start_mlserver),
    Peer.of(rest_model_service, rest_model_service.start_rest_model_service),
    Peer.of(litserve, litserve.start_litserve),
    Peer.of(bentoml, bentoml.start_bentoml),
    Peer.of(ray_serve, ray_serve.start_ray_serve, own_phase=True),
)
