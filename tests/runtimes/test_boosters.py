"""hostd.runtimes.boosters: XGBoost and LightGBM model files served with no code. Models are trained
here on scikit-learn's bundled datasets; hostd's predictions must equal the library's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pytest
import xgboost
from sklearn.datasets import load_diabetes, load_iris

from hostd.errors import ModelLoadError
from hostd.loading import load_model
from hostd.model import check_model
from hostd.runtimes.boosters import LightGBMModel, XGBoostModel
from hostd.settings import ModelSettings

SPECIES = ["setosa", "versicolor", "virginica"]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def answers(model: Any, matrix: np.ndarray) -> list[dict[str, Any]]:
    inputs = [model.input_schema.model_validate(dict(zip(model.input_schema.model_fields, row.tolist(),
                                                         strict=True))) for row in matrix]
    return [output.model_dump() for output in model.predict_batch(inputs)]


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    return load_iris(return_X_y=True)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, iris: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("boosters")
    x, y = iris
    diabetes = load_diabetes()
    trained: dict[str, Any] = {
        "xgb-multi.json": xgboost.XGBClassifier(n_estimators=8, max_depth=3).fit(x, y),
        "xgb-binary.ubj": xgboost.XGBClassifier(n_estimators=8).fit(x, (y == 1).astype(int)),
        "xgb-regressor.json": xgboost.XGBRegressor(n_estimators=8).fit(diabetes.data, diabetes.target),
        "lgb-multi.txt": lightgbm.LGBMClassifier(n_estimators=8, verbose=-1).fit(x, y),
        "lgb-binary.txt": lightgbm.LGBMClassifier(n_estimators=8, verbose=-1).fit(x, (y == 1).astype(int)),
        "lgb-regressor.txt": lightgbm.LGBMRegressor(n_estimators=8, verbose=-1).fit(diabetes.data, diabetes.target),
    }
    for name, model in trained.items():
        if name.startswith("xgb"):
            model.save_model(folder / name)
        else:
            model.booster_.save_model(folder / name)
    return {"folder": folder, **trained}


@pytest.mark.parametrize(("runtime", "file"), [(XGBoostModel, "xgb-multi.json"), (LightGBMModel, "lgb-multi.txt")])
def test_a_multiclass_model_predicts_the_librarys_class_and_probabilities(
        runtime: Any, file: str, files: dict[str, Any], iris: tuple[np.ndarray, np.ndarray]) -> None:
    model = runtime(uri=str(files["folder"] / file), classes=SPECIES, probabilities=True, features=FEATURES)
    check_model(model)
    assert list(model.input_schema.model_fields) == FEATURES
    got = answers(model, iris[0])
    library = files[file]
    assert [a["prediction"] for a in got] == [SPECIES[i] for i in library.predict(iris[0]).tolist()]
    assert np.allclose([list(a["probabilities"].values()) for a in got], library.predict_proba(iris[0]))
    assert list(got[0]["probabilities"]) == SPECIES


@pytest.mark.parametrize(("runtime", "file"), [(XGBoostModel, "xgb-binary.ubj"), (LightGBMModel, "lgb-binary.txt")])
def test_a_binary_model_predicts_class_0_or_1_without_configured_labels(
        runtime: Any, file: str, files: dict[str, Any], iris: tuple[np.ndarray, np.ndarray]) -> None:
    model = runtime(uri=str(files["folder"] / file), probabilities=True)
    assert list(model.input_schema.model_fields) == ["f0", "f1", "f2", "f3"]
    got = answers(model, iris[0])
    library = files[file]
    assert [a["prediction"] for a in got] == library.predict(iris[0]).tolist()
    assert np.allclose([list(a["probabilities"].values()) for a in got], library.predict_proba(iris[0]))


@pytest.mark.parametrize(("runtime", "file"), [(XGBoostModel, "xgb-regressor.json"),
                                               (LightGBMModel, "lgb-regressor.txt")])
def test_a_regressor_predicts_the_librarys_numbers(runtime: Any, file: str, files: dict[str, Any]) -> None:
    data = load_diabetes()
    model = runtime(uri=str(files["folder"] / file), name="progression")
    assert model.qualified_name == "progression"
    got = [a["prediction"] for a in answers(model, data.data[:30])]
    assert np.allclose(got, files[file].predict(data.data[:30]), rtol=1e-5)


@pytest.mark.parametrize(("runtime", "file", "configuration", "words"), [
    (XGBoostModel, "xgb-multi.json", {"classes": ["a", "b"]}, "classes lists 2 labels, but the model has 3"),
    (LightGBMModel, "lgb-regressor.txt", {"classes": ["a"]}, "the model is a regressor"),
    (LightGBMModel, "lgb-regressor.txt", {"probabilities": True}, "not a classifier"),
    (XGBoostModel, "xgb-multi.json", {"features": ["a"]}, "lists 1 names, but the model takes 4"),
    (XGBoostModel, "lgb-multi.txt", {}, "not an XGBoost model file hostd knows"),
    (LightGBMModel, "xgb-multi.json", {}, "is not a LightGBM model text file"),
], ids=["class-count", "classes-for-regressor", "probabilities-for-regressor", "feature-count", "xgb-wrong-format",
        "lgb-wrong-format"])
def test_a_mismatched_configuration_is_an_error_naming_the_entry_and_what_to_do(
        runtime: Any, file: str, configuration: dict[str, Any], words: str, files: dict[str, Any]) -> None:
    settings = ModelSettings.model_validate({"class_path": f"hostd.runtimes.boosters:{runtime.__name__}",
                                             "configuration": {"uri": str(files["folder"] / file), **configuration}})
    with pytest.raises(ModelLoadError) as raised:
        load_model(settings, lambda *keys: "host.yaml:7")
    assert "host.yaml:7" in str(raised.value) and words in str(raised.value), str(raised.value)


def test_a_file_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="is not an XGBoost model"):
        XGBoostModel(uri=str(path))
