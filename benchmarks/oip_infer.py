"""OIP v2 ModelInfer on iris over HTTP (wrk) and gRPC (h2load), same server, same run.

    python -m benchmarks.oip_infer [--concurrency 16] [--seconds 10]

Needs wrk and h2load (Debian: wrk, nghttp2-client). Starts `hostd run` on free ports, waits for
ready, drives each protocol for a bounded time, prints requests/s and latency percentiles.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from hostd_grpc._proto import inference as pb

ROOT = Path(__file__).resolve().parent.parent
IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def start_hostd_with(transports: dict[str, Any]) -> Iterator[int]:
    """Serve iris with ``transports`` (plus HTTP, whose port is yielded) until the block ends."""
    http_port = free_port()
    config = {
        "models": [{"class_path": "iris_model.model:IrisModel"}],
        "transports": {"http": {"port": http_port}, **transports},
        "log_level": "warning",
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "host.yaml"
        path.write_text(yaml.safe_dump(config))
        hostd = str(Path(sys.executable).with_name("hostd"))
        proc = subprocess.Popen([hostd, "run", str(path)], cwd=ROOT, stdout=subprocess.DEVNULL)
        try:
            _wait_ready(proc, http_port)
            yield http_port
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def _wait_ready(proc: subprocess.Popen[bytes], http_port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/api/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("hostd did not become ready")


def wrk_http(port: int, concurrency: int, seconds: int, workdir: Path) -> dict[str, float]:
    inputs = [{"name": k, "datatype": "FP64", "shape": [1], "data": [v]} for k, v in IRIS.items()]
    body = httpx.Request("POST", "http://x", json={"inputs": inputs}).content.decode()
    script = workdir / "v2.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = [[{body}]]\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    out = subprocess.run(["wrk", "-t2", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script),
                          f"http://127.0.0.1:{port}/v2/models/iris_model/infer"],
                         capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": _ms(latency["50"]), "p99_ms": _ms(latency["99"]),
            "errors": float(sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out)))}


def h2load_grpc(port: int, concurrency: int, seconds: int, workdir: Path) -> dict[str, float]:
    request = pb.ModelInferRequest(model_name="iris_model", inputs=[
        pb.ModelInferRequestInferInputTensor(name=k, datatype="FP64", shape=[1],
                                             contents=pb.InferTensorContents(fp64_contents=[v]))
        for k, v in IRIS.items()])
    message = bytes(request)
    framed = workdir / "infer.bin"
    framed.write_bytes(struct.pack(">?I", False, len(message)) + message)  # gRPC length-prefixed frame
    log = workdir / "h2load.log"
    out = subprocess.run(["h2load", f"-D{seconds}", "--log-file", str(log), f"-c{concurrency}", "-m1", "-t2",
                          "-d", str(framed),
                          "-H", "content-type: application/grpc", "-H", "te: trailers",
                          f"http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"],
                         capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    assert done and rps, out
    # --log-file: one line per request, "start(us) status duration(us)"
    durations = sorted(int(line.split()[2]) / 1000 for line in log.read_text().splitlines() if line.strip())
    return {"rps": float(rps.group(1)), "p50_ms": durations[len(durations) // 2],
            "p99_ms": durations[int(len(durations) * 0.99)], "errors": float(done.group(3))}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    for tool in ("wrk", "h2load"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (apt-get install wrk nghttp2-client)")
    grpc_port = free_port()
    with tempfile.TemporaryDirectory() as tmp, start_hostd_with({"grpc": {"port": grpc_port}}) as http_port:
        workdir = Path(tmp)
        http = wrk_http(http_port, args.concurrency, args.seconds, workdir)
        grpc = h2load_grpc(grpc_port, args.concurrency, args.seconds, workdir)
    print(f"iris ModelInfer, {args.concurrency} concurrent, {args.seconds} s each")
    print(f"HTTP v2 (wrk):     {http['rps']:8.0f} req/s  p50 {http['p50_ms']:.2f} ms  p99 {http['p99_ms']:.2f} ms"
          f"  errors {http['errors']:.0f}")
    print(f"gRPC v2 (h2load):  {grpc['rps']:8.0f} req/s  p50 {grpc['p50_ms']:.2f} ms  p99 {grpc['p99_ms']:.2f} ms"
          f"  errors {grpc['errors']:.0f}")
    print(f"gRPC / HTTP: {grpc['rps'] / http['rps']:.2f}x")


if __name__ == "__main__":
    main()
