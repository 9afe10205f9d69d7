"""hostd.model: the structural check, hostd's decorator base, and which batch function is used."""

from __future__ import annotations

from typing import Any

import pytest

from hostd import MLModel, MLModelDecorator
from hostd.model import batch_function, check_model
from tests.support.toy import EchoInput, EchoModel, EchoOutput, PlusOne
from tests.support.toy_extra import DictSchemaModel, MLBaseEcho, MLBasePlusTen, NotAModel, PassThrough


def inputs(*xs: float) -> list[EchoInput]:
    return [EchoInput(x=x) for x in xs]


def ys(outputs: list[Any]) -> list[float]:
    return [output.y for output in outputs]


# --- check_model ---------------------------------------------------------------------------------


def test_check_model_accepts_a_hostd_model() -> None:
    check_model(EchoModel())


def test_check_model_accepts_an_ml_base_model_that_does_not_subclass_hostd() -> None:
    model = MLBaseEcho()
    assert not isinstance(model, MLModel)
    check_model(model)


def test_check_model_names_every_missing_attribute() -> None:
    with pytest.raises(TypeError) as raised:
        check_model(NotAModel())
    message = str(raised.value)
    assert message.startswith("NotAModel is not a model: missing ")
    # Exactly what is absent; display_name and predict are there.
    missing = message.removeprefix("NotAModel is not a model: missing ").split(", ")
    assert missing == ["qualified_name", "description", "version", "input_schema", "output_schema"]


def test_check_model_rejects_a_schema_that_is_not_a_pydantic_model() -> None:
    with pytest.raises(TypeError, match=r"DictSchemaModel\.input_schema must be a pydantic model class"):
        check_model(DictSchemaModel())


def test_check_model_rejects_a_schema_instance_instead_of_a_class() -> None:
    class InstanceSchema(EchoModel):
        output_schema = EchoOutput(y=1)  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"output_schema must be a pydantic model class"):
        check_model(InstanceSchema())


def test_check_model_rejects_a_predict_that_is_not_callable() -> None:
    class NoPredict(EchoModel):
        predict = "soon"  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"NoPredict\.predict is not callable"):
        check_model(NoPredict())


# --- MLModelDecorator ----------------------------------------------------------------------------


def test_decorator_forwards_every_property_and_predict() -> None:
    model = EchoModel(name="doubler", version="3.1.4", factor=2)
    model.deterministic = False
    decorated = MLModelDecorator().set_model(model)

    assert decorated.display_name == "Echo"
    assert decorated.qualified_name == "doubler"
    assert decorated.description == "Doubles x"
    assert decorated.version == "3.1.4"
    assert decorated.input_schema is EchoInput
    assert decorated.output_schema is EchoOutput
    assert decorated.deterministic is False
    assert decorated.factor == 2  # anything else is forwarded too
    assert decorated.predict(EchoInput(x=4, text="a")) == EchoOutput(y=8, text="A")
    check_model(decorated)


def test_decorator_can_override_one_property_and_keep_the_rest() -> None:
    decorated = PassThrough(EchoModel(name="echo"))
    assert decorated.description == "Doubles x (decorated)"
    assert decorated.qualified_name == "echo"


def test_decorator_configuration_reaches_the_decorator() -> None:
    decorated = PlusOne(amount=5).set_model(EchoModel())
    assert decorated.predict(EchoInput(x=1)).y == 7


def test_decorator_that_overrides_predict_is_applied_to_each_item_of_a_batch() -> None:
    model = EchoModel()
    decorated = PlusOne(model)

    assert ys(decorated.predict_batch(inputs(1, 2, 3))) == [3, 5, 7]
    assert model.batches == []  # the wrapped model's batch path would have skipped the decorator


def test_decorator_that_does_not_override_predict_keeps_the_vectorised_predict_batch() -> None:
    model = EchoModel()
    decorated = PassThrough(model)

    assert ys(decorated.predict_batch(inputs(1, 2, 3))) == [2, 4, 6]
    assert model.batches == [3]  # one call with all three rows


def test_batch_function_of_a_hostd_model_is_its_predict_batch() -> None:
    model = EchoModel()
    assert ys(batch_function(model)(inputs(1, 2))) == [2, 4]
    assert model.batches == [2]


def test_batch_function_of_stacked_decorators_applies_each_decorator_once_per_item() -> None:
    model = EchoModel()
    decorated = PassThrough(PlusOne(model))
    assert ys(batch_function(decorated)(inputs(1, 2))) == [3, 5]


# --- ml_base models and decorators ----------------------------------------------------------------


def test_batch_function_of_an_ml_base_model_uses_its_predict_batch() -> None:
    model = MLBaseEcho()
    assert ys(batch_function(model)(inputs(1, 2))) == [3, 6]
    assert model.batch_calls == [2]


def test_batch_function_of_an_ml_base_decorator_uses_the_decorators_predict() -> None:
    model = MLBaseEcho()
    decorated = MLBasePlusTen(model=model)
    # ml_base forwards unknown attributes, so decorated.predict_batch would be the inner model's.
    assert decorated.predict_batch == model.predict_batch

    assert ys(batch_function(decorated)(inputs(1, 2))) == [13, 16]
    assert model.batch_calls == []
