"""The ``hostd`` console script, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOSTD = str(Path(sys.executable).with_name("hostd"))
TOY = "tests.support.toy"


def hostd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("HOSTD_")}
    return subprocess.run([HOSTD, *args], cwd=ROOT, env=env, input=stdin, capture_output=True, text=True,
                          timeout=30)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "host.yaml"
    path.write_text(textwrap.dedent(f"""\
        models:
          - class_path: {TOY}:EchoModel
          - class_path: {TOY}:EchoModel
            configuration: {{name: echo, version: 1.10.0}}
          - class_path: {TOY}.AsyncEchoModel
            configuration: {{name: async_echo, version: 0.1.0}}
        """))
    return path


def test_help_lists_the_commands() -> None:
    result = hostd("--help")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("Commands:")[1].split()
    for command in ("run", "check", "models", "predict"):
        assert command in commands


def test_version() -> None:
    result = hostd("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "hostd, version 0.1.0"


def test_check_prints_one_line_per_model(config: Path) -> None:
    result = hostd("check", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "async_echo\t0.1.0\tdeterministic=true",
        "echo\t1.0.0\tdeterministic=true",
        "echo\t1.10.0\tdeterministic=true",
    ]


def test_check_reports_a_typo_with_file_line_and_key_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text(f"models:\n  - class_path: {TOY}:EchoModel\n    timout_ms: 5\n")
    result = hostd("check", str(path))
    assert result.returncode == 2
    assert f"{path}:3: models[0].timout_ms: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_traceback_shows_where_a_model_that_fails_to_load_raised(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text(f"models:\n  - class_path: {TOY}:FailsToLoad\n")
    plain = hostd("check", str(path))
    assert "`hostd --traceback ...` shows where" in plain.stderr
    result = hostd("--traceback", "check", str(path))
    assert result.returncode == 2
    assert f"{path}:2:" in result.stderr
    assert "Traceback (most recent call last):" in result.stderr
    assert 'tests/support/toy.py", line' in result.stderr  # the model's own frame
    assert result.stderr.rstrip().endswith("FileNotFoundError: parameters.skops is missing")


def test_every_broken_model_is_reported_in_one_run(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text(f"models:\n  - class_path: {TOY}:FailsToLoad\n  - class_path: {TOY}:Nope\n"
                    f"  - class_path: {TOY}:EchoModel\n    configuration: {{colour: red}}\n")
    result = hostd("check", str(path))
    assert result.returncode == 2
    assert f"{path}:2: {TOY}:FailsToLoad failed to load: FileNotFoundError" in result.stderr
    assert f"{path}:3: module '{TOY}' has no attribute 'Nope'" in result.stderr
    assert f"{path}:5: configuration.colour: {TOY}:EchoModel takes no argument 'colour'" in result.stderr


def test_predict_loads_only_the_model_it_needs(tmp_path: Path) -> None:
    # The broken entry says its name in the config, so predict never builds it (a class attribute
    # qualified_name works the same; EchoModel's is a property, so it is built to learn its name).
    path = tmp_path / "host.yaml"
    path.write_text(f"models:\n  - class_path: {TOY}:FailsToLoad\n    qualified_name: broken\n"
                    f"  - class_path: {TOY}:EchoModel\n")
    result = hostd("predict", str(path), "echo", '{"x": 2}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["y"] == 4


def test_predict_prints_an_error_once(config: Path) -> None:
    result = hostd("predict", str(config), "echo", '{"x": "two"}')
    assert result.returncode == 1
    assert result.stderr.count("invalid input for model 'echo'") == 1, result.stderr


def test_check_reports_a_model_that_fails_to_load_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text(f"models:\n  - class_path: {TOY}:FailsToLoad\n")
    result = hostd("check", str(path))
    assert result.returncode == 2
    assert f"{path}:2:" in result.stderr
    assert "FileNotFoundError: parameters.skops is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_an_unknown_transport_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text(f"models:\n  - class_path: {TOY}:EchoModel\ntransports:\n  htp: {{}}\n")
    result = hostd("check", str(path))
    assert result.returncode == 2
    assert f"{path}:4: transports.htp: no such transport is installed (installed: " in result.stderr
    assert "http" in result.stderr


def test_models_json_prints_metadata_with_schemas(config: Path) -> None:
    result = hostd("models", str(config), "--json")
    assert result.returncode == 0, result.stderr
    metadata = json.loads(result.stdout)
    assert [(item["qualified_name"], item["version"]) for item in metadata] == [
        ("async_echo", "0.1.0"), ("echo", "1.0.0"), ("echo", "1.10.0")]
    echo = metadata[1]
    assert echo["display_name"] == "Echo"
    assert echo["deterministic"] is True
    assert echo["input_schema"]["required"] == ["x"]
    assert set(echo["output_schema"]["properties"]) == {"y", "text"}


def test_models_text_shows_each_model(config: Path) -> None:
    result = hostd("models", str(config))
    assert result.returncode == 0, result.stderr
    assert "echo 1.10.0  Echo" in result.stdout
    assert "input schema:" in result.stdout


def test_predict_prints_the_prediction_json(config: Path) -> None:
    result = hostd("predict", str(config), "echo", '{"x": 2}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"y": 4.0, "text": ""}


def test_predict_a_given_version_and_an_async_model(config: Path) -> None:
    old = hostd("predict", str(config), "echo", '{"x": 2}', "--version", "1.0.0")
    assert json.loads(old.stdout)["y"] == 4
    assert json.loads(hostd("predict", str(config), "async_echo", '{"x": 3}').stdout)["y"] == 6


def test_predict_reads_stdin_when_data_is_a_dash(config: Path) -> None:
    result = hostd("predict", str(config), "echo", "-", stdin='{"x": 5, "text": "ok"}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"y": 10.0, "text": "OK"}


def test_predict_with_bad_json_fails_clearly(config: Path) -> None:
    result = hostd("predict", str(config), "echo", "{x: 2")
    assert result.returncode != 0
    assert "not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_predict_with_invalid_input_fails_clearly(config: Path) -> None:
    result = hostd("predict", str(config), "echo", '{"x": "two"}')
    assert result.returncode != 0
    assert "INVALID_INPUT: invalid input for model 'echo': x:" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_predict_with_an_unknown_model_fails_clearly(config: Path) -> None:
    result = hostd("predict", str(config), "iris", '{"x": 2}')
    assert result.returncode != 0
    assert "MODEL_NOT_FOUND: model 'iris' is not served here (served: async_echo, echo)" in result.stderr


def test_check_reports_routing_that_names_a_missing_model_or_version(config: Path) -> None:
    config.write_text(config.read_text() + textwrap.dedent("""\
        routing:
          echo: {traffic: {"1.0.0": 90, "3.0.0": 10}}
          nope: {default_version: "1.0.0"}
        """))
    result = hostd("check", str(config))
    assert result.returncode == 2
    assert f"{config}:8: routing.echo.traffic: 'echo' has no version '3.0.0' (configured: 1.0.0, 1.10.0)" \
        in result.stderr
    assert f"{config}:9: routing.nope: no model named 'nope' is configured" in result.stderr


def test_check_reads_the_model_repository_directory(config: Path) -> None:
    (config.parent / "models.d").mkdir()
    (config.parent / "models.d" / "extra.yaml").write_text(
        f"class_path: {TOY}:EchoModel\nqualified_name: extra\nconfiguration: {{name: extra}}\n")
    config.write_text(config.read_text() + "model_repository: models.d\n")
    result = hostd("check", str(config))
    assert result.returncode == 0, result.stderr
    assert "extra\t1.0.0\tdeterministic=true" in result.stdout.splitlines()
