"""`hostd models CONFIG --live`: a running daemon's quality figures, as labels over HTTP made them."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from tests.conftest import HOSTD
from tests.support.e2e import IRIS_ROWS, PATIENCE_S, Start, iris_payload

pytestmark = pytest.mark.e2e


def test_hostd_models_live_shows_the_accuracy_the_labels_give(start_hostd: Start) -> None:
    server = start_hostd({"models": [{"class_path": "iris_model.model:IrisModel"}], "feedback": {}})
    with httpx.Client(base_url=server.url, timeout=PATIENCE_S) as http:
        for index, species in IRIS_ROWS.items():  # the model gets these five right
            answer = http.post("/api/models/iris_model/prediction", json=iris_payload(index))
            request_id = answer.headers["x-request-id"]
            label = species if index != 4 else "Iris virginica"  # one label says otherwise
            joined = http.post("/api/models/iris_model/feedback", json={"request_id": request_id, "label": label})
            assert joined.json()["joined"] is True

    text = subprocess.run([HOSTD, "models", str(server.config), "--live"], capture_output=True, text=True,
                          timeout=PATIENCE_S, check=True).stdout
    assert text.strip() == "iris_model 1.0.0  accuracy 0.8  (5 labels, classification)"
    figures = json.loads(subprocess.run([HOSTD, "models", str(server.config), "--live", "--json"],
                                        capture_output=True, text=True, timeout=PATIENCE_S, check=True).stdout)
    assert figures == [{"model": "iris_model", "version": "1.0.0", "kind": "classification", "labels": 5,
                        "accuracy": 0.8}]
    metrics = httpx.get(f"{server.url}/metrics", timeout=PATIENCE_S).text
    assert 'hostd_model_quality{metric="accuracy",model="iris_model",version="1.0.0"} 0.8' in metrics
