"""MLServer 1.7.1 (Seldon) serving the same iris estimator as hostd, as a named benchmark peer.

    python -m benchmarks.mlserver_peer    # install, start, one HTTP and one gRPC infer, stop

MLServer lives in its own venv under .bench/ (its pins clash with ours); the model is hostd's
LogisticRegression dumped with joblib for mlserver-sklearn. Request bodies are one iris row in
MLServer's natural form: a single FP64 [1, 4] tensor, which its default numpy codec decodes whole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc
import httpx
import joblib
import numpy
import sklearn
from hostd_grpc._proto import inference as pb
from iris_model.model import load_parameters

from benchmarks.common import free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "iris_model"
ROW = [5.1, 3.5, 1.4, 0.2]  # setosa
# The pickle must load in MLServer's venv exactly as it was written in ours. uvloop 0.22 made
# get_event_loop() raise without a loop, which kills MLServer 1.7.1's inference worker at start
# (SeldonIO/MLServer#2286, unfixed in 1.7.1): the server then says ready but serves no model.
REQUIREMENTS = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", f"scikit-learn=={sklearn.__version__}",
                f"numpy=={numpy.__version__}", f"joblib=={joblib.__version__}", "uvloop<0.22"]
# MLServer's defaults except these. parallel_workers stays at its default of 1 (one inference worker
# process beside the HTTP/gRPC process), and metrics stay on, on their own port, as out of the box.
SETTINGS = {
    # debug defaults to true, which logs every request (uvicorn access log, gRPC logging interceptor)
    # at DEBUG level; hostd is benchmarked with log_level warning, so per-request logging goes off here too.
    "debug": False,
}


def ensure_venv(path: Path = ROOT / ".bench" / "mlserver-venv") -> Path:
    """Create MLServer's venv once (a stamp records what was installed); return its `mlserver` executable."""
    stamp = path / ".installed"
    wanted = "\n".join(REQUIREMENTS)
    if not stamp.exists() or stamp.read_text() != wanted:
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", *REQUIREMENTS], check=True)
        stamp.write_text(wanted)
    return path / "bin" / "mlserver"


def write_model_repository(directory: Path) -> None:
    """Write settings.json and iris_model/ (model.joblib, model-settings.json) into ``directory``."""
    model_dir = directory / MODEL
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(load_parameters(), model_dir / "model.joblib")
    (directory / "settings.json").write_text(json.dumps(SETTINGS, indent=2))
    model_settings = {
        "name": MODEL,
        "implementation": "mlserver_sklearn.SKLearnModel",
        # "np": the request's single tensor becomes the feature matrix; predict_fn "predict" returns
        # the class label (a BYTES output named "predict"), not predict_proba.
        "parameters": {"uri": "./model.joblib", "content_type": "np", "extra": {"predict_fn": "predict"}},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))


@contextmanager
def start_mlserver(http_port: int, grpc_port: int, metrics_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Serve iris with MLServer on 127.0.0.1 until the block ends; yield the `mlserver start` process."""
    mlserver = ensure_venv()
    with tempfile.TemporaryDirectory(prefix="mlserver-") as tmp:
        workdir = Path(tmp)
        write_model_repository(workdir / "models")
        env = {key: value for key, value in os.environ.items()
               if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith("MLSERVER")}
        env.update(MLSERVER_HOST="127.0.0.1", MLSERVER_HTTP_PORT=str(http_port),
                   MLSERVER_GRPC_PORT=str(grpc_port), MLSERVER_METRICS_PORT=str(metrics_port))
        with open(workdir / "mlserver.log", "wb") as log:
            # cwd=workdir: MLServer keeps .metrics/ and .envs/ in its working directory.
            proc = subprocess.Popen([str(mlserver), "start", str(workdir / "models")], cwd=workdir, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                _wait_ready(proc, http_port, workdir / "mlserver.log")
                yield proc
            finally:
                _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], http_port: int, log: Path) -> None:
    # /v2/health/ready is 200 with no model loaded at all (e.g. its worker died), so ask for iris too.
    urls = [f"http://127.0.0.1:{http_port}/v2/health/ready", f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if all(httpx.get(url, timeout=1).status_code == 200 for url in urls):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"MLServer did not become ready:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # start_new_session made proc.pid the id of a process group that holds only what MLServer started:
    # its inference worker and multiprocessing's resource tracker.
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # MLServer stops its workers itself on SIGTERM
    with suppress(subprocess.TimeoutExpired):
        proc.wait(15)
    deadline = time.monotonic() + 5  # after a clean exit the resource tracker may still be tidying up
    while proc.poll() is not None and _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with suppress(ProcessLookupError):  # the group is gone: nothing was left
        os.killpg(proc.pid, signal.SIGKILL)  # a stuck server or an orphaned worker
    proc.wait()


def v2_json_body() -> bytes:
    """One iris row as an OIP v2 REST infer body."""
    inputs = [{"name": "predict", "datatype": "FP64", "shape": [1, 4], "data": ROW}]
    return json.dumps({"inputs": inputs}).encode()


def grpc_infer_request() -> bytes:
    """One iris row as a serialized inference.ModelInferRequest, typed in fp64_contents."""
    tensor = pb.ModelInferRequestInferInputTensor(name="predict", datatype="FP64", shape=[1, 4],
                                                  contents=pb.InferTensorContents(fp64_contents=ROW))
    return bytes(pb.ModelInferRequest(model_name=MODEL, inputs=[tensor]))


def _group_members(pgid: int) -> list[str]:
    """Live processes in ``pgid``; zombies are dead already, waiting for init to reap them."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    rows = [line.split(maxsplit=3) for line in out.splitlines()]
    return [" ".join(row) for row in rows if row[1] == str(pgid) and not row[2].startswith("Z")]


def main() -> None:
    for attempt in ("first", "second"):
        started = time.monotonic()
        ensure_venv()
        print(f"ensure_venv ({attempt} call): {time.monotonic() - started:.1f} s")
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    started = time.monotonic()
    with start_mlserver(http_port, grpc_port, metrics_port) as proc:
        print(f"ready after {time.monotonic() - started:.1f} s; process group {proc.pid}:")
        print("\n".join(f"  {member}" for member in _group_members(proc.pid)))
        reply = httpx.post(f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer", content=v2_json_body(),
                           headers={"content-type": "application/json"}, timeout=10)
        print("HTTP:", reply.status_code, reply.text)
        assert reply.json()["outputs"][0]["data"] == ["Iris setosa"], reply.text
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
            answer = pb.ModelInferResponse.parse(infer(grpc_infer_request(), timeout=10))
        print("gRPC:", answer)
        assert answer.outputs[0].contents.bytes_contents == [b"Iris setosa"], answer
        started = time.monotonic()
    print(f"stopped in {time.monotonic() - started:.1f} s, exit code {proc.returncode}")
    left = _group_members(proc.pid)
    print(f"left in process group {proc.pid}: {left or 'nothing'}")
    assert not left


if __name__ == "__main__":
    main()
