"""iris as an ml_base MLModel, the model class rest-model-service serves (its rest_config.yaml names
this class and passes the joblib file as its configuration)."""

from iris_peer import IrisPrediction, IrisRow, features, load_estimator, species
from ml_base import MLModel


class IrisModel(MLModel):
    display_name = "Iris Model"
    qualified_name = "iris_model"
    description = "Predicts the species of an iris flower from its sepal and petal measurements."
    version = "0.1.0"
    input_schema = IrisRow
    output_schema = IrisPrediction

    def __init__(self, path: str) -> None:
        self._estimator = load_estimator(path)

    def predict(self, data: IrisRow) -> IrisPrediction:
        return IrisPrediction(species=species(self._estimator, features(data)))
