"""hostd.settings: host.yaml is validated, interpolated, overridable, and errors say file:line and key."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from hostd.configfile import load_settings, parse_settings
from hostd.errors import ConfigError
from hostd.settings import HostSettings

ECHO = "tests.support.toy:EchoModel"


class HttpLike(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = 8080


class ToySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = "toy://"


TRANSPORTS: dict[str, type[BaseModel]] = {"http": HttpLike, "toy": ToySettings}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "host.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={}, **kwargs)  # type: ignore[arg-type]
    return str(raised.value)


def test_a_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
        """)
    settings = load_settings(path, environ={})
    [model] = settings.models
    assert model.class_path == ECHO
    assert model.configuration == {}
    assert model.decorators == []
    assert (model.timeout_ms, model.max_pending, model.create_endpoint) == (2000, 1024, True)
    assert model.workers.kind == "thread"


def test_a_typo_names_the_file_the_line_and_the_dotted_key(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
            configuration: {{}}
            timout_ms: 100
        """)
    message = load_error(path)
    assert f"{path}:4: models[0].timout_ms: unknown key" in message


def test_a_typo_in_a_nested_section_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
          - class_path: {ECHO}
            workers:
              kind: thread
              cuont: 2
        """)
    assert f"{path}:6: models[1].workers.cuont: unknown key" in load_error(path)


def test_a_typo_at_the_top_level(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
        shutdown_grace: 3
        """)
    assert f"{path}:3: shutdown_grace: unknown key" in load_error(path)


def test_a_wrong_type_names_the_line_the_key_and_what_was_expected(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
            timeout_ms: soon
        """)
    message = load_error(path)
    assert f"{path}:3: models[0].timeout_ms:" in message
    assert "integer" in message


def test_an_out_of_range_value_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
            max_pending: 0
        """)
    message = load_error(path)
    assert f"{path}:3: models[0].max_pending:" in message
    assert "greater than or equal to 1" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
            timeout_ms: soon
            colour: blue
        """)
    message = load_error(path)
    assert "models[0].timeout_ms" in message
    assert "models[0].colour: unknown key" in message


def test_a_missing_models_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, """
        transports:
          http: {}
        """)
    message = load_error(path)
    assert f"{path}" in message
    assert "give at least one model under 'models:' or a 'model_repository:' directory" in message


def test_an_empty_models_list_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "models: []\n")
    message = load_error(path)
    assert f"{path}:1:" in message
    assert "give at least one model under 'models:' or a 'model_repository:' directory" in message


def test_a_file_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "- just a list\n")
    assert "must be a mapping with a 'models' key" in load_error(path)


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "models: [\n")
    message = load_error(path)
    assert str(path) in message
    assert "invalid YAML" in message


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    message = load_error(tmp_path / "nope.yaml")
    assert f"{tmp_path / 'nope.yaml'}: cannot read config" in message


# --- ${VAR} interpolation and HOSTD_ overrides ---------------------------------------------------


def test_variables_are_interpolated_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, """
        models:
          - class_path: ${MODEL_CLASS}
            configuration:
              name: "${NAME:-echo}-${SUFFIX:-v1}"
        transports:
          http: {port: "${PORT}"}
        """)
    settings = load_settings(path, TRANSPORTS, environ={"MODEL_CLASS": ECHO, "PORT": "9001", "SUFFIX": "v2"})
    assert settings.models[0].class_path == ECHO
    assert settings.models[0].configuration == {"name": "echo-v2"}
    assert settings.transports["http"].port == 9001


def test_a_set_variable_wins_over_its_default(tmp_path: Path) -> None:
    path = write(tmp_path, """
        models:
          - class_path: ${MODEL_CLASS:-nowhere:Nothing}
        """)
    assert load_settings(path, environ={"MODEL_CLASS": ECHO}).models[0].class_path == ECHO


def test_an_unset_variable_without_default_names_the_line_and_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
            configuration:
              token: ${{API_TOKEN}}
        """)
    message = load_error(path)
    assert f"{path}:4:" in message
    assert "API_TOKEN is not set" in message


def test_load_settings_reads_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("HOSTD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ECHO_CLASS_FOR_TEST", ECHO)
    monkeypatch.setenv("HOSTD_TRANSPORTS__HTTP__PORT", "9002")
    path = write(tmp_path, """
        models:
          - class_path: ${ECHO_CLASS_FOR_TEST}
        """)
    settings = load_settings(path)
    assert settings.models[0].class_path == ECHO
    assert settings.transports == {"http": {"port": 9002}}


def test_hostd_env_overrides_replace_and_add_keys(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
        shutdown_grace_s: 10
        transports:
          http: {{host: 0.0.0.0, port: 8080}}
        """)
    environ = {"HOSTD_SHUTDOWN_GRACE_S": "2.5", "HOSTD_TRANSPORTS__HTTP__PORT": "9000",
               "HOSTD_LOG_LEVEL": "debug", "HOSTD_CONFIG": "ignored.yaml"}
    settings = load_settings(path, TRANSPORTS, environ=environ)
    assert settings.shutdown_grace_s == 2.5
    assert settings.log_level == "debug"
    assert settings.transports["http"] == HttpLike(host="0.0.0.0", port=9000)


def test_a_hostd_env_override_creates_a_missing_section(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
        """)
    settings = load_settings(path, TRANSPORTS, environ={"HOSTD_TRANSPORTS__TOY__URL": "toy://here"})
    assert settings.transports == {"toy": ToySettings(url="toy://here")}


def test_a_misspelt_hostd_env_override_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
        """)
    with pytest.raises(ConfigError, match="shutdown_grace: unknown key"):
        load_settings(path, environ={"HOSTD_SHUTDOWN_GRACE": "5"})


# --- transports -----------------------------------------------------------------------------------


def test_no_transports_section_means_http_only(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
        """)
    assert load_settings(path, environ={}).transports == {"http": {}}
    assert load_settings(path, TRANSPORTS, environ={}).transports == {"http": HttpLike()}


def test_transport_sections_are_validated_by_their_settings_classes(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
        transports:
          http: {{port: 9000}}
          toy:
        """)
    settings = load_settings(path, TRANSPORTS, environ={})
    assert settings.transports == {"http": HttpLike(port=9000), "toy": ToySettings()}


def test_a_typo_in_a_transport_section_names_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
        transports:
          http:
            host: 127.0.0.1
            prot: 9000
        """)
    message = load_error(path, transports=TRANSPORTS)
    assert f"{path}:6: transports.http.prot: unknown key" in message


def test_a_wrong_type_in_a_transport_section_names_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
        transports:
          http:
            port: eighty
        """)
    assert f"{path}:5: transports.http.port:" in load_error(path, transports=TRANSPORTS)


def test_an_unknown_transport_lists_the_installed_ones(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
        transports:
          http: {{}}
          grcp: {{port: 8081}}
        """)
    message = load_error(path, transports=TRANSPORTS)
    assert f"{path}:5: transports.grcp: no such transport is installed" in message
    assert "installed: http, toy" in message


# --- rest-model-service configurations ------------------------------------------------------------


def test_a_rest_model_service_config_loads(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        service_title: REST Model Service
        description: "Service description"
        version: "1.1.0"
        models:
          - class_path: {ECHO}
            create_endpoint: false
            configuration:
            decorators:
              - class_path: tests.support.toy:PlusOne
                configuration:
                  amount: 2
              - class_path: tests.support.toy_extra:PassThrough
                configuration:
        logging:
          version: 1
          disable_existing_loggers: false
          formatters:
            simple:
              format: "%(message)s"
        metrics:
          enabled: true
          should_group_status_codes: true
        """)
    settings = load_settings(path, environ={})
    assert (settings.service_title, settings.description, settings.version) == (
        "REST Model Service", "Service description", "1.1.0")
    [model] = settings.models
    assert model.create_endpoint is False
    assert model.configuration == {}  # `configuration:` with no value means no arguments
    assert [(d.class_path, d.configuration) for d in model.decorators] == [
        ("tests.support.toy:PlusOne", {"amount": 2}),
        ("tests.support.toy_extra:PassThrough", {}),
    ]
    assert settings.logging is not None and settings.logging["version"] == 1
    assert settings.metrics == {"enabled": True, "should_group_status_codes": True}
    assert settings.transports == {"http": {}}


def test_decorators_with_no_value_means_none(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        models:
          - class_path: {ECHO}
            decorators:
        """)
    assert load_settings(path, environ={}).models[0].decorators == []


def test_parse_settings_names_its_source_and_can_say_where_a_key_is() -> None:
    text = textwrap.dedent(f"""\
        models:
          - class_path: {ECHO}
          - class_path: {ECHO}
        """)
    settings = parse_settings(text, "inline.yaml")
    assert isinstance(settings, HostSettings)
    assert settings.where(("models", 1)) == "inline.yaml:3"
    assert settings.where(("models", 1, "class_path")) == "inline.yaml:3"
    with pytest.raises(ConfigError, match=r"inline\.yaml:2: models\[0\]\.clas_path: unknown key"):
        parse_settings(text.replace("class_path", "clas_path", 1), "inline.yaml")
