"""iris as a Ray Serve deployment with a FastAPI ingress: POST /predict with the row as JSON. Runs a
local Ray cluster of its own until SIGTERM or SIGINT.

    python ray_serve_iris.py PORT    (IRIS_JOBLIB names the estimator file)
"""

import os
import signal
import sys
import threading

import ray
from fastapi import FastAPI
from iris_peer import IrisPrediction, IrisRow, features, load_estimator, species
from ray import serve

app = FastAPI()


@serve.deployment
@serve.ingress(app)
class Iris:
    def __init__(self, path: str) -> None:
        self.estimator = load_estimator(path)

    @app.post("/predict")
    def predict(self, row: IrisRow) -> IrisPrediction:
        return IrisPrediction(species=species(self.estimator, features(row)))


def main() -> None:
    stop = threading.Event()
    # The harness made HOME a work directory of this server's own: Ray's session files go there too,
    # not into a /tmp/ray that other Ray users on the machine share.
    ray.init(address="local", include_dashboard=False, _temp_dir=os.path.join(os.environ["HOME"], "ray"))
    # Access log off, as hostd is run with log_level warning; everything else is Ray Serve's default
    # (one replica, 5 requests in flight per replica).
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])},
                logging_config={"enable_access_log": False})
    serve.run(Iris.bind(os.environ["IRIS_JOBLIB"]), route_prefix="/")
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
