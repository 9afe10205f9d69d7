"""``hostd new NAME``: a model package in the layout the README recommends, ready to install and test.

It writes a ``pyproject.toml`` (semver version, pinned model dependencies), the model class with its
input and output schemas, a training script that saves the parameters as package data with skops, a
README and tests, then runs the training once so the package works at once: ``pip install -e NAME &&
pytest NAME`` is green, and ``class_path: NAME.model:ClassName`` in a host.yaml serves it. The starting
estimator is a classifier (scikit-learn's iris data) or a regressor (its diabetes data); the files are
``string.Template`` texts, no template engine. The package sits under ``src/``: an editable install
then puts ``src`` on the path, so the package imports the same from any directory (in the flat layout,
the project's own folder, named like the package, shadowed it when Python ran from its parent).
"""

from __future__ import annotations

import keyword
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from string import Template

from hostd.errors import ConfigError


@dataclass(frozen=True)
class Kind:
    """What the starting estimator learns, from which bundled dataset."""

    dataset: str  # sklearn.datasets.load_<dataset>
    estimator: str  # an expression, with its import
    estimator_import: str
    output_field: str
    output_type: str
    score: str
    example: dict[str, float]  # a row of the dataset, for the tests


KINDS = {
    "classifier": Kind("iris", "LogisticRegression(max_iter=1000)",
                       "from sklearn.linear_model import LogisticRegression", "label", "str", "accuracy",
                       {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}),
    "regressor": Kind("diabetes", "Ridge(alpha=1.0)", "from sklearn.linear_model import Ridge", "value", "float", "R²",
                      {"age": 0.038, "sex": 0.051, "bmi": 0.062, "bp": 0.022, "s1": -0.044, "s2": -0.035,
                       "s3": -0.043, "s4": -0.003, "s5": 0.020, "s6": -0.018}),
}


def create(name: str, kind: str, directory: Path) -> Path:
    """Write the package ``name`` under ``directory`` and train it; returns the package's folder."""
    check_name(name)
    root = directory / name
    if root.exists():
        raise ConfigError(f"{root} already exists: choose another name or --directory")
    spec = KINDS[kind]
    values = {"name": name, "cls": class_name(name), "kind": kind, "dataset": spec.dataset,
              "estimator": spec.estimator, "estimator_import": spec.estimator_import,
              "output_field": spec.output_field, "output_type": spec.output_type, "score": spec.score,
              "fields": "\n".join(f"    {field}: float = Field(description=\"{field}\")" for field in spec.example),
              "example": "{\n" + "".join(f"    {key!r}: {value!r},\n" for key, value in spec.example.items()) + "}",
              "pins": pins()}
    for relative, text in FILES.items():
        path = root / Template(relative).substitute(values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(text).substitute(values))
    trained = subprocess.run([sys.executable, "-m", f"{name}.train"], cwd=root / "src", capture_output=True,
                             text=True)
    if trained.returncode != 0:
        raise RuntimeError(f"{name}'s first training failed:\n{trained.stderr[-2000:]}")
    return root


def check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise ConfigError(f"{name!r} cannot name a package: use lower-case letters, digits and underscores, "
                          "starting with a letter (e.g. flowers_model)")


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_") if part) + ("" if name.endswith("model") else "Model")


def pins() -> str:
    """The model's dependencies pinned to the minor versions installed here, as the bundled packages are."""
    lines = []
    for distribution in ("scikit-learn", "skops", "numpy"):
        major, minor = metadata.version(distribution).split(".")[:2]
        lines.append(f'    "{distribution}>={major}.{minor},<{major}.{int(minor) + 1}",')
    return "\n".join(lines)


FILES = {
    "pyproject.toml": '''[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "$name"
dynamic = ["version"]
description = "A $kind served by hostd"
requires-python = ">=3.11"
dependencies = [
    "hostd",
    "pydantic>=2.7",
$pins
]

[project.optional-dependencies]
test = ["pytest>=8"]

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.dynamic]
version = { attr = "$name.__version__" }

[tool.setuptools.package-data]
$name = ["model_files/*.skops"]
''',
    "src/$name/__init__.py": '''"""A $kind for hostd; the model class is ``$name.model:$cls``."""

__version__ = "0.1.0"  # semver: bump the major version when the schemas change incompatibly
''',
    "src/$name/schemas.py": '''"""Input and output of $name."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ${cls}Input(BaseModel):
    """One row of features, in the order the model was trained on."""

    model_config = ConfigDict(extra="forbid")

$fields


class ${cls}Output(BaseModel):
    $output_field: $output_type
''',
    "src/$name/model.py": '''"""$cls: the model class hostd serves (``class_path: $name.model:$cls``)."""

from __future__ import annotations

import numpy as np
from hostd import MLModel
from hostd.artifacts import load_skops

from $name import __version__
from $name.schemas import ${cls}Input, ${cls}Output

PARAMETERS_FILE = "model_files/model.skops"
#: Types in the parameters file that skops does not trust by default; train.py checks this list.
TRUSTED_TYPES: list[str] = []
FEATURES = tuple(${cls}Input.model_fields)


class $cls(MLModel):
    display_name = "$cls"
    qualified_name = "$name"
    description = "A $kind trained on scikit-learn's $dataset data."
    version = __version__
    input_schema = ${cls}Input
    output_schema = ${cls}Output
    deterministic = True

    def __init__(self) -> None:
        self._estimator = load_skops(__package__, PARAMETERS_FILE, object, TRUSTED_TYPES)

    def predict(self, data: ${cls}Input) -> ${cls}Output:
        return self.predict_batch([data])[0]

    def predict_batch(self, data: list[${cls}Input]) -> list[${cls}Output]:
        if not data:
            return []
        matrix = np.array([[getattr(row, name) for name in FEATURES] for row in data], dtype=np.float64)
        return [${cls}Output($output_field=value) for value in self._estimator.predict(matrix).tolist()]
''',
    "src/$name/train.py": '''"""Train $name on scikit-learn's bundled $dataset data: ``python -m $name.train``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hostd.artifacts import train_command
from sklearn.datasets import load_$dataset
$estimator_import

from $name.model import FEATURES, PARAMETERS_FILE, TRUSTED_TYPES

DEFAULT_OUTPUT = Path(__file__).parent / PARAMETERS_FILE


def load_training_data() -> tuple[np.ndarray, np.ndarray]:
    dataset = load_$dataset()
    names = tuple(name.removesuffix(" (cm)").replace(" ", "_") for name in dataset.feature_names)
    if names != FEATURES:
        raise RuntimeError(f"dataset columns {names} do not match the input schema {FEATURES}")
    target = dataset.target
    if hasattr(dataset, "target_names"):  # a classifier: the labels as text
        target = np.array(dataset.target_names)[target]
    return dataset.data, target


def make_estimator():  # type: ignore[no-untyped-def]
    return $estimator


def main(argv: list[str] | None = None) -> None:
    train_command(argv, description=__doc__ or "", output=DEFAULT_OUTPUT, trusted=TRUSTED_TYPES,
                  load_training_data=load_training_data, make_estimator=make_estimator, score="$score")


if __name__ == "__main__":
    main()
''',
    "tests/test_model.py": '''"""$name loads its trained parameters and predicts."""

from __future__ import annotations

import pytest
from hostd.model import check_model

from $name.model import $cls
from $name.schemas import ${cls}Input, ${cls}Output

EXAMPLE = $example


@pytest.fixture(scope="module")
def model() -> $cls:
    return $cls()


def test_it_fits_hostds_model_contract(model: $cls) -> None:
    check_model(model)
    assert model.qualified_name == "$name"


def test_it_predicts_one_row_and_many(model: $cls) -> None:
    row = ${cls}Input.model_validate(EXAMPLE)
    one = model.predict(row)
    assert isinstance(one, ${cls}Output)
    assert model.predict_batch([row, row]) == [one, one]


def test_a_bad_row_is_refused_by_the_schema() -> None:
    with pytest.raises(ValueError):
        ${cls}Input.model_validate({**EXAMPLE, "unknown": 1.0})
''',
    "README.md": '''# $name

A $kind served by [hostd](https://github.com/hostd/hostd), trained on scikit-learn's bundled $dataset data.

```sh
pip install -e $name            # (or pip install -e "$name[test]" for pytest)
pytest $name                    # the model loads and predicts
python -m $name.train           # retrain: writes src/$name/model_files/model.skops
```

Serve it: add it to a host.yaml (`models: [{class_path: $name.model:$cls}]`) and `hostd run host.yaml`,
or `hostd serve $name.model:$cls`. Change the schemas in `src/$name/schemas.py`, the estimator and the
training data in `src/$name/train.py`, and bump the version in `src/$name/__init__.py` (semver: the major
version when the schemas change incompatibly).
''',
}
