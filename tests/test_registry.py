"""hostd.registry: models built from settings, looked up by name and version, and closed."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from hostd.configfile import parse_settings
from hostd.errors import ConfigError, ConfigErrors, ModelLoadError, ModelNotFound
from hostd.registry import Registry
from tests.support.toy import EchoInput, EchoModel
from tests.support.toy_extra import ClosableEcho, CloseFails, MLBaseEcho

TOY = "tests.support.toy"
EXTRA = "tests.support.toy_extra"


def registry(*models: dict[str, Any]) -> Registry:
    return Registry.from_settings(parse_settings(yaml.safe_dump({"models": list(models)}), "host.yaml"))


def config_error(*models: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        registry(*models)
    return str(raised.value)


def echo(version: str = "1.0.0", name: str = "echo", **extra: Any) -> dict[str, Any]:
    return {"class_path": f"{TOY}:EchoModel", "configuration": {"name": name, "version": version}, **extra}


# --- building -------------------------------------------------------------------------------------


@pytest.mark.parametrize("class_path", [f"{TOY}:EchoModel", f"{TOY}.EchoModel"])
def test_builds_a_model_from_a_class_path_with_colon_or_dot(class_path: str) -> None:
    models = registry({"class_path": class_path, "configuration": {"name": "doubler", "factor": 3}})
    served = models.get("doubler")
    assert isinstance(served.model, EchoModel)
    assert served.model.factor == 3
    assert (served.name, served.version) == ("doubler", "1.0.0")
    assert served.deterministic and not served.is_async


def test_an_ml_base_model_loads_unchanged() -> None:
    served = registry({"class_path": f"{EXTRA}:MLBaseEcho"}).get("mlbase_echo")
    assert isinstance(served.model, MLBaseEcho)
    assert served.version == "0.2.0"
    assert served.metadata()["input_schema"]["properties"]["x"]["type"] == "number"


def test_decorators_are_applied_in_the_order_listed_first_innermost() -> None:
    plus_then_times = registry(echo(name="a", decorators=[
        {"class_path": f"{TOY}:PlusOne"}, {"class_path": f"{EXTRA}:TimesTen"}]))
    times_then_plus = registry(echo(name="b", decorators=[
        {"class_path": f"{EXTRA}:TimesTen"},
        {"class_path": f"{TOY}:PlusOne", "configuration": {"amount": 5}},
    ]))

    assert plus_then_times.get("a").model.predict(EchoInput(x=1)).y == (1 * 2 + 1) * 10
    assert times_then_plus.get("b").model.predict(EchoInput(x=1)).y == 1 * 2 * 10 + 5


def test_a_decorated_model_keeps_its_name_and_uses_the_decorator_for_batches() -> None:
    plus_one = {"class_path": f"{TOY}:PlusOne"}
    served = registry(echo(name="echo", version="2.0.0", decorators=[plus_one])).get("echo")
    assert (served.name, served.version) == ("echo", "2.0.0")
    assert [out.y for out in served.predict_batch([EchoInput(x=1), EchoInput(x=2)])] == [3, 5]


def test_an_ml_base_decorator_wraps_a_hostd_model() -> None:
    served = registry(echo(decorators=[{"class_path": f"{EXTRA}:MLBasePlusTen"}])).get("echo")
    assert served.model.predict(EchoInput(x=1)).y == 12
    assert [out.y for out in served.predict_batch([EchoInput(x=1), EchoInput(x=2)])] == [12, 14]


def test_metadata_publishes_names_schemas_and_determinism() -> None:
    metadata = registry(echo(version="1.2.3")).get("echo").metadata()
    assert metadata["qualified_name"] == "echo"
    assert metadata["display_name"] == "Echo"
    assert metadata["description"] == "Doubles x"
    assert metadata["version"] == "1.2.3"
    assert metadata["deterministic"] is True
    assert set(metadata["input_schema"]["properties"]) == {"x", "delay_ms", "fail", "text"}
    assert metadata["output_schema"]["required"] == ["y"]


def test_an_unimportable_module_is_a_config_error_naming_the_class_path_and_line() -> None:
    message = config_error(echo(), {"class_path": "no_such_package.model:Model"})
    assert message.startswith("host.yaml:")
    assert "cannot import 'no_such_package.model:Model'" in message
    assert "No module named 'no_such_package'" in message


def test_a_missing_attribute_is_a_config_error() -> None:
    message = config_error({"class_path": f"{TOY}:EchoModle"})
    assert f"module '{TOY}' has no attribute 'EchoModle'" in message


def test_a_class_path_without_a_module_is_a_config_error() -> None:
    assert "should look like 'package.module:Class'" in config_error({"class_path": "EchoModel"})


def test_a_model_whose_init_raises_is_a_config_error_with_the_exception() -> None:
    message = config_error({"class_path": f"{TOY}:FailsToLoad"})
    assert f"{TOY}:FailsToLoad failed to load" in message
    assert "FileNotFoundError: parameters.skops is missing" in message


def test_a_configuration_keyword_the_model_does_not_take_is_reported_at_its_own_line() -> None:
    text = yaml.safe_dump({"models": [{"class_path": f"{TOY}:EchoModel", "configuration": {"colour": "red"}}]})
    line = next(number for number, row in enumerate(text.splitlines(), 1) if "colour" in row)
    with pytest.raises(ConfigError) as raised:
        Registry.from_settings(parse_settings(text, "host.yaml"))
    assert str(raised.value) == (f"host.yaml:{line}: configuration.colour: {TOY}:EchoModel "
                                 "takes no argument 'colour'")
    assert not isinstance(raised.value, ModelLoadError)  # a config mistake, not a model bug


def test_a_model_whose_init_raises_keeps_the_exception_for_its_traceback() -> None:
    text = yaml.safe_dump({"models": [{"class_path": f"{TOY}:FailsToLoad"}]})
    with pytest.raises(ModelLoadError) as raised:
        Registry.from_settings(parse_settings(text, "host.yaml"))
    assert isinstance(raised.value.__cause__, FileNotFoundError)
    assert raised.value.__cause__.__traceback__ is not None


def test_every_broken_model_entry_is_reported_not_just_the_first() -> None:
    text = yaml.safe_dump({"models": [{"class_path": f"{TOY}:FailsToLoad"}, echo(),
                                      {"class_path": f"{TOY}:EchoModle"}]})
    lines = [number for number, row in enumerate(text.splitlines(), 1) if "FailsToLoad" in row or "EchoModle" in row]
    with pytest.raises(ConfigErrors) as raised:
        Registry.from_settings(parse_settings(text, "host.yaml"))
    reported = str(raised.value).splitlines()
    assert [row.split(":")[1] for row in reported] == [str(line) for line in lines]
    assert "FileNotFoundError" in reported[0] and "no attribute 'EchoModle'" in reported[1]


def test_a_class_that_is_not_a_model_is_a_config_error_naming_what_is_missing() -> None:
    message = config_error({"class_path": f"{EXTRA}:NotAModel"})
    assert f"{EXTRA}:NotAModel" in message
    assert "is not a model: missing qualified_name" in message


def test_a_non_pydantic_schema_is_a_config_error() -> None:
    message = config_error({"class_path": f"{EXTRA}:DictSchemaModel"})
    assert "input_schema must be a pydantic model class" in message


def test_an_unimportable_decorator_is_a_config_error() -> None:
    message = config_error(echo(decorators=[{"class_path": f"{TOY}:Nope"}]))
    assert f"module '{TOY}' has no attribute 'Nope'" in message


def test_the_error_points_at_the_failing_model_entry() -> None:
    text = yaml.safe_dump({"models": [echo(), {"class_path": f"{TOY}:FailsToLoad"}]})
    line = next(number for number, row in enumerate(text.splitlines(), 1) if "FailsToLoad" in row)
    with pytest.raises(ConfigError, match=rf"^host\.yaml:{line}: "):
        Registry.from_settings(parse_settings(text, "host.yaml"))


# --- lookup ---------------------------------------------------------------------------------------


def test_the_latest_semver_wins_when_no_version_is_asked() -> None:
    models = registry(echo("1.9.0"), echo("1.10.0"), echo("0.99.0"))
    assert models.get("echo").version == "1.10.0"
    assert models.get("echo", None).version == "1.10.0"


def test_a_pre_release_sorts_below_its_release() -> None:
    for order in [("1.0.0-rc1", "1.0.0"), ("1.0.0", "1.0.0-rc1")]:
        assert registry(*[echo(version) for version in order]).get("echo").version == "1.0.0"
    assert registry(echo("2.0.0a1"), echo("1.9.9")).get("echo").version == "2.0.0a1"
    assert [served.version for served in registry(echo("1.0.0"), echo("1.0.0rc2"), echo("1.0.0rc10"))] == [
        "1.0.0rc2", "1.0.0rc10", "1.0.0"]


def test_a_version_can_be_asked_for() -> None:
    models = registry(echo("1.9.0"), echo("1.10.0"))
    assert models.get("echo", "1.9.0").version == "1.9.0"
    assert models.get("echo", "1.9.0").model.version == "1.9.0"


def test_an_unknown_name_lists_the_served_models() -> None:
    models = registry(echo(name="echo"), echo(name="iris"))
    with pytest.raises(ModelNotFound, match=r"model 'nope' is not served here \(served: echo, iris\)"):
        models.get("nope")


def test_an_unknown_version_lists_the_served_versions() -> None:
    models = registry(echo("1.0.0"), echo("1.1.0"))
    with pytest.raises(ModelNotFound) as raised:
        models.get("echo", "2.0.0")
    assert "model 'echo' has no version '2.0.0'" in raised.value.message
    assert "1.0.0" in raised.value.message and "1.1.0" in raised.value.message


def test_names_len_and_iteration() -> None:
    models = registry(echo("1.10.0", name="b"), echo("1.9.0", name="b"), echo(name="a"))
    assert models.names() == ["a", "b"]
    assert len(models) == 3
    listed = [(served.name, served.version) for served in models]
    assert listed == [("a", "1.0.0"), ("b", "1.9.0"), ("b", "1.10.0")]


def test_remove_a_version() -> None:
    models = registry(echo("1.0.0"), echo("2.0.0"))
    assert models.remove("echo", "2.0.0").version == "2.0.0"
    assert models.get("echo").version == "1.0.0"
    models.remove("echo", "1.0.0")
    assert models.names() == []
    with pytest.raises(ModelNotFound):
        models.get("echo")


# --- close ----------------------------------------------------------------------------------------


def test_close_calls_each_models_close() -> None:
    models = registry({"class_path": f"{EXTRA}:ClosableEcho", "configuration": {"name": "a"}},
                      {"class_path": f"{EXTRA}:ClosableEcho", "configuration": {"name": "b"}},
                      echo(name="c"))  # has no close(): skipped
    models.close()
    assert [served.model.closed for served in models if isinstance(served.model, ClosableEcho)] == [1, 1]


def test_close_survives_a_model_whose_close_raises() -> None:
    # "a" is closed first (names are sorted) and raises; "b" must still be closed.
    models = registry({"class_path": f"{EXTRA}:CloseFails", "configuration": {"name": "a"}},
                      {"class_path": f"{EXTRA}:ClosableEcho", "configuration": {"name": "b"}})
    models.close()
    failing, closable = models.get("a").model, models.get("b").model
    assert isinstance(failing, CloseFails) and failing.closed == 1
    assert closable.closed == 1
