"""``hostd proto``, run as a user runs it: every model, or only the ones named with --model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOSTD = str(Path(sys.executable).with_name("hostd"))
MODELS = [
    {"class_path": "tests.support.toy:EchoModel"},
    {"class_path": "tests.support.toy:EchoModel", "configuration": {"name": "twin", "version": "2.0.0"}},
    {"class_path": "tests.support.toy_grpc:UntypeableDict"},  # dict_model: protobuf cannot describe it
    {"class_path": "no_such_package.model:Model", "qualified_name": "broken"},  # cannot even be imported
]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "host.yaml"
    path.write_text(json.dumps({"models": MODELS}))
    return path


def hostd_proto(config: Path, output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("HOSTD_")}
    return subprocess.run([HOSTD, "proto", str(config), "-o", str(output), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_without_model_every_model_is_loaded_so_a_broken_one_fails_the_command(config: Path,
                                                                               tmp_path: Path) -> None:
    done = hostd_proto(config, tmp_path / "protos")
    assert done.returncode != 0
    assert "no_such_package" in done.stderr


def test_model_loads_and_writes_only_the_model_named(config: Path, tmp_path: Path) -> None:
    # `broken` names itself (qualified_name), so it is not even imported; dict_model is built to
    # learn its name, then passed over without being described.
    done = hostd_proto(config, tmp_path / "protos", "--model", "echo")
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[1] for line in done.stdout.splitlines()] == ["hostd.models.echo.Echo/Predict"]
    assert sorted(path.name for path in (tmp_path / "protos").iterdir()) == ["echo.proto"]


def test_model_is_repeatable(config: Path, tmp_path: Path) -> None:
    done = hostd_proto(config, tmp_path / "protos", "--model", "twin", "--model", "echo", "--model", "twin")
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[1] for line in done.stdout.splitlines()] == [
        "hostd.models.twin.Twin/Predict", "hostd.models.echo.Echo/Predict"]


def test_a_model_that_is_not_configured_is_an_error_naming_it(config: Path, tmp_path: Path) -> None:
    done = hostd_proto(config, tmp_path / "protos", "--model", "lily_model")
    assert done.returncode != 0
    assert "no model named 'lily_model'" in done.stderr
    assert not (tmp_path / "protos").exists()


def test_a_model_named_that_protobuf_cannot_describe_is_still_an_error(config: Path, tmp_path: Path) -> None:
    done = hostd_proto(config, tmp_path / "protos", "--model", "dict_model")
    assert done.returncode != 0
    assert "dict_model" in done.stderr and "'DictInput.weights'" in done.stderr
