"""MLServer 1.7.1 (Seldon) serving the same iris estimator as hostd.

MLServer lives in its own venv under .bench/ (its pins clash with ours); the model is hostd's
LogisticRegression dumped with joblib for mlserver-sklearn. Request bodies are one iris row in
MLServer's natural form: a single FP64 [1, 4] tensor, which its default numpy codec decodes whole.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hostd_grpc._proto import inference as pb

from benchmarks.common import free_port
from benchmarks.peers.process import ESTIMATOR_PINS, dump_estimator, ensure_venv, peer_env, serve

NAME = "mlserver"
MODEL = "iris_model"
ROW = [5.1, 3.5, 1.4, 0.2]  # setosa
VERSION = "1.7.1"
ENDPOINT = f"POST /v2/models/{MODEL}/infer, one FP64 [1, 4] tensor (OIP v2 JSON)"
# uvloop 0.22 made get_event_loop() raise without a loop, which kills MLServer 1.7.1's inference worker
# at start (SeldonIO/MLServer#2286, unfixed in 1.7.1): the server then says ready but serves no model.
REQUIREMENTS = [f"mlserver=={VERSION}", f"mlserver-sklearn=={VERSION}", *ESTIMATOR_PINS, "uvloop<0.22"]
# MLServer's defaults except these. parallel_workers stays at its default of 1 (one inference worker
# process beside the HTTP/gRPC process), and metrics stay on, on their own port, as out of the box.
SETTINGS = {
    # debug defaults to true, which logs every request (uvicorn access log, gRPC logging interceptor)
    # at DEBUG level; hostd is benchmarked with log_level warning, so per-request logging goes off here too.
    "debug": False,
}


def write_model_repository(directory: Path) -> None:
    """Write settings.json and iris_model/ (model.joblib, model-settings.json) into ``directory``."""
    model_dir = directory / MODEL
    model_dir.mkdir(parents=True, exist_ok=True)
    dump_estimator(model_dir)
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
def start_mlserver(http_port: int, grpc_port: int | None = None, metrics_port: int | None = None
                   ) -> Iterator[tuple[str, bytes]]:
    """Serve iris with MLServer on 127.0.0.1 until the block ends; yield its HTTP infer URL and body."""
    bin_dir = ensure_venv(NAME, REQUIREMENTS)
    with tempfile.TemporaryDirectory(prefix="mlserver-") as tmp:
        workdir = Path(tmp)
        write_model_repository(workdir / "models")
        env = {key: value for key, value in peer_env().items() if not key.startswith("MLSERVER")}
        env.update(MLSERVER_HOST="127.0.0.1", MLSERVER_HTTP_PORT=str(http_port),
                   MLSERVER_GRPC_PORT=str(grpc_port or free_port()),
                   MLSERVER_METRICS_PORT=str(metrics_port or free_port()))
        url = f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer"
        # cwd=workdir: MLServer keeps .metrics/ and .envs/ in its working directory. It stops its
        # inference worker itself on SIGTERM.
        with serve([str(bin_dir / "mlserver"), "start", str(workdir / "models")], cwd=workdir, env=env,
                   url=url, body=v2_json_body(), timeout_s=90):
            yield url, v2_json_body()


def v2_json_body() -> bytes:
    """One iris row as an OIP v2 REST infer body."""
    inputs = [{"name": "predict", "datatype": "FP64", "shape": [1, 4], "data": ROW}]
    return json.dumps({"inputs": inputs}).encode()


def grpc_infer_request() -> bytes:
    """One iris row as a serialized inference.ModelInferRequest, typed in fp64_contents."""
    tensor = pb.ModelInferRequestInferInputTensor(name="predict", datatype="FP64", shape=[1, 4],
                                                  contents=pb.InferTensorContents(fp64_contents=ROW))
    return bytes(pb.ModelInferRequest(model_name=MODEL, inputs=[tensor]))
