"""Install, start and ask each peer once (all of them, or those named), then stop it.

    python -m benchmarks.peers [mlserver rest-model-service litserve bentoml ray-serve]
"""

from __future__ import annotations

import sys
import time

import httpx

from benchmarks.common import free_port
from benchmarks.peers import PEERS


def main(names: list[str]) -> None:
    unknown = set(names) - {peer.name for peer in PEERS}
    if unknown:
        raise SystemExit(f"unknown peer {', '.join(sorted(unknown))}; choose from {', '.join(p.name for p in PEERS)}")
    for peer in PEERS:
        if names and peer.name not in names:
            continue
        started = time.monotonic()
        peer.install()
        print(f"{peer.name} {peer.version}: installed ({time.monotonic() - started:.1f} s)")
        started = time.monotonic()
        with peer.start(free_port()) as (url, body):
            print(f"  answering after {time.monotonic() - started:.1f} s: POST {url} {body.decode()}")
            reply = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=10)
            print(f"  {reply.status_code} {reply.text}")
            started = time.monotonic()
        print(f"  stopped in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
