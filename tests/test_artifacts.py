"""hostd.artifacts: skops parameters saved by a train script and loaded from a package's data."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from hostd.artifacts import load_skops, save_skops

PACKAGE = "hostd_test_parameters"
FILENAME = "model_files/model.skops"
TREE = "sklearn.tree._tree.Tree"  # not trusted by skops by default
X = np.array([[0.0], [1.0], [2.0], [3.0]])
Y = np.array([0, 0, 1, 1])


@pytest.fixture
def package_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An importable package named PACKAGE with no data yet; yields its directory."""
    directory = tmp_path / "site" / PACKAGE
    directory.mkdir(parents=True)
    (directory / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(directory.parent))
    yield directory
    sys.modules.pop(PACKAGE, None)


def test_loads_what_was_saved(package_dir: Path) -> None:
    trained = LogisticRegression().fit(X, Y)
    size = save_skops(trained, package_dir / FILENAME)
    assert size == (package_dir / FILENAME).stat().st_size
    loaded = load_skops(PACKAGE, FILENAME, LogisticRegression)
    assert loaded is not trained
    np.testing.assert_array_equal(loaded.predict_proba(X), trained.predict_proba(X))


def test_a_trusted_type_loads(package_dir: Path) -> None:
    save_skops(DecisionTreeClassifier().fit(X, Y), package_dir / FILENAME, trusted=[TREE])
    assert load_skops(PACKAGE, FILENAME, DecisionTreeClassifier, trusted=[TREE]).predict(X).tolist() == [0, 0, 1, 1]


def test_an_untrusted_type_is_refused_naming_the_file_and_the_type(package_dir: Path) -> None:
    save_skops(DecisionTreeClassifier().fit(X, Y), package_dir / FILENAME, trusted=[TREE])
    with pytest.raises(TypeError) as raised:
        load_skops(PACKAGE, FILENAME, DecisionTreeClassifier)
    assert str(raised.value).startswith(f"{PACKAGE}/{FILENAME}: Untrusted types found in the file: ['{TREE}']")


def test_the_wrong_estimator_is_refused_naming_both_types(package_dir: Path) -> None:
    save_skops(LogisticRegression().fit(X, Y), package_dir / FILENAME)
    with pytest.raises(TypeError) as raised:
        load_skops(PACKAGE, FILENAME, DecisionTreeClassifier)
    assert str(raised.value) == f"{PACKAGE}/{FILENAME} holds a LogisticRegression, not a DecisionTreeClassifier"


def test_a_missing_file_says_to_train_first(package_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same relative path in the working directory must not be picked up instead.
    save_skops(LogisticRegression().fit(X, Y), package_dir.parent / FILENAME)
    monkeypatch.chdir(package_dir.parent)
    with pytest.raises(FileNotFoundError, match=f"^{PACKAGE}/{FILENAME} is missing: train the model"):
        load_skops(PACKAGE, FILENAME, LogisticRegression)


@pytest.mark.parametrize(
    ("estimator", "trusted", "needed"),
    [(DecisionTreeClassifier, [], [TREE]), (LogisticRegression, [TREE], [])],
    ids=["type missing from the list", "type the file does not need"],
)
def test_save_refuses_a_trusted_list_that_does_not_fit(
    tmp_path: Path, estimator: type[Any], trusted: list[str], needed: list[str]
) -> None:
    path = tmp_path / "model.skops"
    with pytest.raises(ValueError, match=re.escape(f"do not fit model.skops: it needs exactly {needed}")):
        save_skops(estimator().fit(X, Y), path, trusted=trusted)
    assert not path.exists()
