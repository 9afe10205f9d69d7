"""Load generators we did not write: wrk (HTTP/1.1, Lua script) and h2load (HTTP/2, replaying one
framed gRPC ModelInfer). Each returns a Result; both need Debian's wrk and nghttp2-client."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import orjson
from hostd_grpc._proto import inference as pb

from benchmarks.common import IRIS, Result, percentile

# wrk counts every response's status per thread; done() prints the totals ("status 503 12").
STATUS_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do total[status] = (total[status] or 0) + count end
  end
  for status, count in pairs(total) do io.write(string.format("status %d %d\\n", status, count)) end
end
"""


def hostd_v2_body() -> bytes:
    """One iris row as hostd's OIP v2 infer body: one FP64 [1] tensor per input field."""
    return orjson.dumps({"inputs": [{"name": k, "datatype": "FP64", "shape": [1], "data": [v]}
                                    for k, v in IRIS.items()]})


def hostd_grpc_request() -> bytes:
    request = pb.ModelInferRequest(model_name="iris_model", inputs=[
        pb.ModelInferRequestInferInputTensor(name=k, datatype="FP64", shape=[1],
                                             contents=pb.InferTensorContents(fp64_contents=[v]))
        for k, v in IRIS.items()])
    return bytes(request)


def wrk(url: str, body: bytes, concurrency: int, seconds: int, workdir: Path, *, server: str,
        transport: str = "http", statuses: dict[int, int] | None = None, headers: dict[str, str] | None = None,
        timeout_s: float | None = None) -> Result:
    """POST ``body`` to ``url`` from ``concurrency`` connections for ``seconds``. If ``statuses`` is
    given it is filled with the count of each response status (a Lua callback per response). A request
    unanswered after ``timeout_s`` (wrk's default: 2 s) counts as an error and is left out of the latencies."""
    script = workdir / "post.lua"
    lua = f'wrk.method = "POST"\nwrk.body = [[{body.decode()}]]\nwrk.headers["Content-Type"] = "application/json"\n'
    lua += "".join(f'wrk.headers["{name}"] = "{value}"\n' for name, value in (headers or {}).items())
    script.write_text(lua + (STATUS_LUA if statuses is not None else ""))
    threads = min(2, concurrency)
    timeout = [f"--timeout={timeout_s}s"] if timeout_s else []
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--latency", *timeout, "-s",
                          str(script), url], capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps and latency, out
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    if statuses is not None:
        statuses.update({int(s): int(n) for s, n in re.findall(r"^status (\d+) (\d+)$", out, re.M)})
    return Result(server, transport, concurrency, float(rps.group(1)), _ms(latency["50"]), _ms(latency["99"]),
                  errors, "wrk")


#: gRPC load: at most this many connections, the calls in flight multiplexed over them as streams.
GRPC_CONNECTIONS = 4


def h2load(url: str, message: bytes, concurrency: int, seconds: int, workdir: Path, *, server: str,
           headers: dict[str, str] | None = None) -> Result:
    """Replay one gRPC message for ``seconds`` with ``concurrency`` unary calls in flight, as gRPC
    clients make them: many streams over a few connections (a grpcio or tritonclient channel is one
    connection), here up to GRPC_CONNECTIONS connections with the streams spread over them."""
    framed = workdir / "request.bin"
    framed.write_bytes(struct.pack(">?I", False, len(message)) + message)  # gRPC length-prefixed frame
    log = workdir / "h2load.log"
    connections = min(GRPC_CONNECTIONS, concurrency)
    streams = max(1, concurrency // connections)
    threads = min(2, connections)
    out = subprocess.run(["h2load", f"-D{seconds}", "--log-file", str(log), f"-c{connections}", f"-m{streams}",
                          f"-t{threads}",
                          "-d", str(framed), "-H", "content-type: application/grpc", "-H", "te: trailers",
                          *[arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")], url],
                         capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    assert done and rps, out
    # --log-file: one line per request, "start(us) status duration(us)"
    durations = sorted(int(line.split()[2]) / 1000 for line in log.read_text().splitlines() if line.strip())
    return Result(server, "grpc", concurrency, float(rps.group(1)), percentile(durations, 0.5),
                  percentile(durations, 0.99), int(done.group(3)), "h2load")


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
