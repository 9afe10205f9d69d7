"""Model files served with no code (hostd.runtimes), end to end: for each runtime (scikit-learn,
XGBoost, LightGBM, ONNX, MLflow) a real `hostd run` answers over the author's HTTP API and OIP v2
(tritonclient), and `hostd batch` scores a file with it; every answer equals the library's own
prediction. Also: a process worker, `hostd serve`, and a file in object storage (S3 on moto)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import skops.io as sio
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
import yaml
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from hostd.runtimes.artifact import file_sha256
from tests.conftest import free_port
from tests.e2e.brokers import BUCKET, start_moto
from tests.support.e2e import PATIENCE_S, Start

pytestmark = pytest.mark.e2e
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
Trained = tuple[Path, LogisticRegression, np.ndarray]  # the file, the estimator, rows to ask about


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    data = load_iris()
    estimator = LogisticRegression(max_iter=500).fit(data.data, np.array(data.target_names)[data.target])
    path = tmp_path_factory.mktemp("artifact") / "flowers.skops"
    sio.dump(estimator, path)
    return path, estimator, data.data[::10]  # 15 rows, every species


SPECIES = ["setosa", "versicolor", "virginica"]


@pytest.fixture(scope="module")
def every_runtime(tmp_path_factory: pytest.TempPathFactory, trained: Trained) -> dict[str, tuple[dict[str, object],
                                                                                                  list[str]]]:
    """Per runtime: a model entry named flowers for an iris classifier saved in that runtime's format, and
    what the library predicts for the `trained` rows."""
    import lightgbm
    import mlflow.sklearn
    import pandas
    import xgboost
    from skl2onnx import to_onnx

    folder = tmp_path_factory.mktemp("runtimes")
    path, estimator, matrix = trained
    data = load_iris()
    boosted = xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(data.data, data.target)
    boosted.save_model(folder / "flowers.json")
    light = lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(data.data, data.target)
    light.booster_.save_model(folder / "flowers.txt")
    (folder / "flowers.onnx").write_bytes(to_onnx(estimator, data.data[:1].astype(np.float32)).SerializeToString())
    frame = pandas.DataFrame(data.data, columns=FEATURES)  # MLflow's signature names the columns
    framed = LogisticRegression(max_iter=500).fit(frame, np.array(data.target_names)[data.target])
    mlflow.sklearn.save_model(framed, str(folder / "flowers"),
                              signature=mlflow.models.infer_signature(frame, framed.predict(frame)))
    by_index = {"classes": SPECIES, "features": FEATURES}
    return {
        "sklearn": ({"uri": str(path), "configuration": {"features": FEATURES}}, estimator.predict(matrix).tolist()),
        "xgboost": ({"uri": str(folder / "flowers.json"), "configuration": by_index},
                    [SPECIES[i] for i in boosted.predict(matrix).tolist()]),
        "lightgbm": ({"uri": str(folder / "flowers.txt"), "configuration": by_index},
                     [SPECIES[i] for i in light.predict(matrix).tolist()]),
        "onnx": ({"uri": str(folder / "flowers.onnx"), "configuration": {"features": FEATURES}},
                 estimator.predict(matrix).tolist()),
        "mlflow": ({"uri": str(folder / "flowers"), "configuration": {"trust": True}},
                   framed.predict(pandas.DataFrame(matrix, columns=FEATURES)).tolist()),
    }


@pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")  # MLflow's, saving
@pytest.mark.parametrize("runtime", ["sklearn", "xgboost", "lightgbm", "onnx", "mlflow"])
def test_every_runtime_answers_what_its_library_predicts_over_http_oip_v2_and_batch(
        start_hostd: Start, every_runtime: dict[str, tuple[dict[str, object], list[str]]], trained: Trained,
        tmp_path: Path, runtime: str) -> None:
    model, expected = every_runtime[runtime]
    _, _, matrix = trained
    server = start_hostd({"models": [model]})
    metadata = httpx.get(f"{server.url}/api/models/flowers/metadata", timeout=PATIENCE_S).json()
    fields = list(metadata["input_schema"]["properties"])
    assert fields == FEATURES, metadata  # from the configuration, or from MLflow's signature
    rows = [dict(zip(fields, row.tolist(), strict=True)) for row in matrix]
    answers = [httpx.post(f"{server.url}/api/models/flowers/prediction", json=row, timeout=PATIENCE_S).json()
               for row in rows]
    assert [answer["prediction"] for answer in answers] == expected
    assert oip_predictions(server.port, fields, matrix) == expected
    config, source, target = tmp_path / "host.yaml", tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    config.write_text(yaml.safe_dump({"models": [model]}))
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = subprocess.run([str(Path(sys.executable).with_name("hostd")), "batch", str(config), "--model", "flowers",
                           "--input", str(source), "--output", str(target)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["prediction"]["prediction"] for line in target.read_text().splitlines()] == expected


def oip_predictions(port: int, fields: list[str], matrix: np.ndarray) -> list[str]:
    """What tritonclient.http gets from flowers for ``matrix``, one FP64 tensor per field."""
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        inputs = []
        for index, name in enumerate(fields):
            tensor = triton.InferInput(name, [len(matrix)], "FP64")
            tensor.set_data_from_numpy(matrix[:, index].astype(np.float64))
            inputs.append(tensor)
        result = client.infer("flowers", inputs, outputs=[triton.InferRequestedOutput("prediction")])
        return [label.decode() for label in result.as_numpy("prediction").tolist()]
    finally:
        client.close()


def entry(path: Path, **extra: object) -> dict[str, object]:
    return {"class_path": "hostd.runtimes.sklearn:SklearnModel",
            "configuration": {"uri": str(path), "features": FEATURES, "probabilities": True}, **extra}


@pytest.mark.parametrize("workers", ["thread", "process"])
def test_http_and_oip_v2_answer_what_the_estimator_predicts(start_hostd: Start, trained: Trained,
                                                            workers: str) -> None:
    path, estimator, matrix = trained
    server = start_hostd({"models": [entry(path, workers={"kind": workers, "count": 1})]})
    expected = estimator.predict(matrix).tolist()
    answers = [httpx.post(f"{server.url}/api/models/flowers/prediction", timeout=PATIENCE_S,
                          json=dict(zip(FEATURES, row.tolist(), strict=True))).json() for row in matrix]
    assert [answer["prediction"] for answer in answers] == expected
    sent = np.array([list(answer["probabilities"].values()) for answer in answers])
    assert np.allclose(sent, estimator.predict_proba(matrix))
    assert oip_predictions(server.port, FEATURES, matrix) == expected


def test_hostd_batch_scores_a_file_with_it(tmp_path: Path, trained: Trained) -> None:
    path, estimator, matrix = trained
    config = tmp_path / "host.yaml"
    config.write_text(yaml.safe_dump({"models": [entry(path)]}))
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(dict(zip(FEATURES, row.tolist(), strict=True))) + "\n" for row in matrix))
    hostd = str(Path(sys.executable).with_name("hostd"))
    done = subprocess.run([hostd, "batch", str(config), "--model", "flowers", "--input", str(source),
                           "--output", str(target)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    predictions = [json.loads(line)["prediction"]["prediction"] for line in target.read_text().splitlines()]
    assert predictions == estimator.predict(matrix).tolist()


def test_hostd_serve_serves_a_file_with_no_config_and_says_how_to_call_it(trained: Trained) -> None:
    path, estimator, matrix = trained
    hostd = str(Path(sys.executable).with_name("hostd"))
    for _ in range(3):  # the two ports it takes (HTTP, then gRPC on the next) may be taken meanwhile
        port = free_port()
        proc = subprocess.Popen([hostd, "serve", str(path), "--port", str(port)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)  # its log: not read, so never a full pipe
        try:
            banner = read_until(proc, "Ctrl-C stops it.")
            if banner is None:
                continue  # it exited: most likely a port was taken; try others
            assert f"http://127.0.0.1:{port}/docs" in banner and f"127.0.0.1:{port + 1}" in banner, banner
            assert f"curl -X POST http://127.0.0.1:{port}/api/models/flowers/prediction" in banner, banner
            row = dict(zip(["f0", "f1", "f2", "f3"], matrix[0].tolist(), strict=True))
            reply = httpx.post(f"http://127.0.0.1:{port}/api/models/flowers/prediction", json=row, timeout=PATIENCE_S)
            assert reply.json() == {"prediction": estimator.predict(matrix[:1]).tolist()[0]}
            grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{port + 1}")
            try:
                assert grpc.is_model_ready("flowers")
            finally:
                grpc.close()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(PATIENCE_S) == 0
            return
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
    pytest.fail("hostd serve did not start on three pairs of free ports")


def read_until(proc: subprocess.Popen[str], last: str) -> str | None:
    """What ``proc`` printed up to the line ``last``; None if it exited first."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == last:
            return "".join(lines)
    return None


def test_a_model_in_object_storage_is_fetched_checked_and_served(start_hostd: Start, trained: Trained,
                                                                   tmp_path: Path) -> None:
    """s3:// on a local S3 server (moto): the file is copied once into the artifact cache, its SHA-256
    checked, and served; a wrong checksum or a missing key is an error at start naming the entry."""
    import boto3

    path, estimator, matrix = trained
    moto = start_moto(tmp_path)
    try:
        endpoint = f"http://127.0.0.1:{moto.port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        s3.upload_file(str(path), BUCKET, "models/flowers.skops")
        s3.close()
        storage = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        configuration = {"uri": f"s3://{BUCKET}/models/flowers.skops", "features": FEATURES,
                         "sha256": file_sha256(path), "storage_options": storage}
        cache = tmp_path / "cache"
        server = start_hostd({"models": [{"class_path": "hostd.runtimes.sklearn:SklearnModel",
                                          "configuration": configuration}]},
                             env={"HOSTD_ARTIFACT_CACHE": str(cache)})
        row = dict(zip(FEATURES, matrix[5].tolist(), strict=True))
        reply = httpx.post(f"{server.url}/api/models/flowers/prediction", json=row, timeout=PATIENCE_S)
        assert reply.json() == {"prediction": estimator.predict(matrix[5:6]).tolist()[0]}
        assert [copy.read_bytes() for copy in cache.rglob("flowers.skops")] == [path.read_bytes()]
        for wrong, words in [({"sha256": "0" * 64}, "not the configured"),
                             ({"uri": f"s3://{BUCKET}/models/missing.skops"}, "does not exist")]:
            config = tmp_path / "wrong.yaml"
            config.write_text(yaml.safe_dump({"models": [{"class_path": "hostd.runtimes.sklearn:SklearnModel",
                                                          "configuration": {**configuration, **wrong}}]}))
            checked = subprocess.run([str(Path(sys.executable).with_name("hostd")), "check", str(config)],
                                     capture_output=True, text=True, timeout=120,
                                     env={**os.environ, "HOSTD_ARTIFACT_CACHE": str(tmp_path / "other-cache")})
            assert checked.returncode == 2, checked.stderr
            assert f"{config}:" in checked.stderr and words in checked.stderr, checked.stderr
    finally:
        moto.stop()


def test_hostd_run_with_a_model_file_that_does_not_load_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "host.yaml"
    config.write_text(yaml.safe_dump({"models": [{"uri": str(tmp_path / "missing.skops")}],
                                      "transports": {"http": {"port": free_port()}}}))
    done = subprocess.run([str(Path(sys.executable).with_name("hostd")), "run", str(config)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"{config}:2:" in done.stderr and "does not exist: check the path" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "uncaught exception" not in done.stderr, done.stderr
