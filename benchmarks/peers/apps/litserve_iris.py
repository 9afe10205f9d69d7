"""iris as a LitServe LitAPI: POST /predict with the row as JSON.

    python litserve_iris.py PORT
"""

import sys

import litserve as ls
from iris_peer import IrisRow, features, load_estimator, species


class IrisAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.estimator = load_estimator()

    def decode_request(self, request: IrisRow) -> list[float]:
        return features(request)

    def predict(self, x: list[float]) -> str:
        return species(self.estimator, x)

    def encode_response(self, output: str) -> dict[str, str]:
        return {"species": output}


if __name__ == "__main__":
    server = ls.LitServer(IrisAPI(), accelerator="cpu", workers_per_device=1)
    # log_level warning: no access log, as hostd is run with log_level warning.
    server.run(host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", generate_client_file=False)
