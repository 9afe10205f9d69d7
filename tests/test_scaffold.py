"""`hostd new`: the package it writes installs (a wheel with its trained parameters), passes its own
tests, and serves: hostd loads it from a host.yaml and answers over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from hostd.errors import ConfigError
from hostd.scaffold import check_name, class_name
from tests.conftest import HostdProcess

HOSTD = str(Path(sys.executable).with_name("hostd"))


def new(name: str, kind: str, directory: Path) -> Path:
    done = subprocess.run([HOSTD, "new", name, "--kind", kind, "--directory", str(directory)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"pytest {directory / name}" in done.stdout and f"{name}.model:{class_name(name)}" in done.stdout
    return directory / name


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_the_new_package_is_trained_and_its_own_tests_pass(tmp_path: Path, kind: str) -> None:
    root = new("flowers_model", kind, tmp_path)
    assert (root / "src" / "flowers_model" / "model_files" / "model.skops").stat().st_size > 0
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                           cwd=root, env={**os.environ, "PYTHONPATH": str(root / "src")}, capture_output=True,
                           text=True, timeout=120)
    assert tests.returncode == 0 and "3 passed" in tests.stdout, tests.stdout + tests.stderr


def test_its_wheel_carries_the_trained_parameters(tmp_path: Path) -> None:
    root = new("sugar", "regressor", tmp_path)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--disable-pip-version-check", "-w", str(tmp_path / "wheels"), str(root)],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheels").glob("sugar-0.1.0-*.whl")
    with zipfile.ZipFile(wheel) as files:
        assert {"sugar/model_files/model.skops", "sugar/model.py", "sugar/train.py"} <= set(files.namelist())


@pytest.mark.e2e
def test_hostd_serves_it_from_a_host_yaml(tmp_path: Path, start_hostd: Callable[..., HostdProcess]) -> None:
    root = new("flowers_model", "classifier", tmp_path)
    # As installed: importable by hostd (here from PYTHONPATH rather than pip install -e, to leave the venv be).
    server = start_hostd({"models": [{"class_path": "flowers_model.model:FlowersModel"}]},
                         env={"PYTHONPATH": str(root / "src")})
    reply = httpx.post(f"{server.url}/api/models/flowers_model/prediction", timeout=30,
                       json={"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2})
    assert reply.json() == {"label": "setosa"}


@pytest.mark.parametrize("name", ["Flowers", "1model", "class", "flowers-model", ""])
def test_a_name_that_cannot_be_a_package_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="cannot name a package"):
        check_name(name)
