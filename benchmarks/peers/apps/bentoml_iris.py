"""iris as a BentoML service: POST /predict, the row's four fields as the API's parameters.

    bentoml serve bentoml_iris:Iris --host 127.0.0.1 --port PORT
"""

import bentoml
from iris_peer import PetalLength, PetalWidth, SepalLength, SepalWidth, load_estimator, species


# Access logging off, as hostd is run with log_level warning; one worker is BentoML's default.
@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Iris:
    def __init__(self) -> None:
        self.estimator = load_estimator()

    @bentoml.api
    def predict(self, sepal_length: SepalLength, sepal_width: SepalWidth, petal_length: PetalLength,
                petal_width: PetalWidth) -> dict[str, str]:
        return {"species": species(self.estimator, [sepal_length, sepal_width, petal_length, petal_width])}
