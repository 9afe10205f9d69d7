"""Typed per-model gRPC messages from pydantic schemas (plugins/hostd_grpc/typed.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from hostd_grpc.typed import ModelProto, ProtoError, TypedService, describe, fill, render, to_dict
from hostd_grpc.unary import Call
from sklearn.datasets import load_digits

from hostd.dataplane import DataPlane
from hostd.errors import InvalidInput
from hostd.registry import Registry, ServedModel, build_model
from hostd.settings import ModelSettings
from hostd.tasks import InFlight
from tests.support.protoc import import_generated
from tests.support.toy_grpc import Kind, ProfileInput

FDP = descriptor_pb2.FieldDescriptorProto
IRIS = "iris_model.model:IrisModel"
DIGITS = "digits_model.model:DigitsModel"
DIABETES = "diabetes_model.model:DiabetesModel"
PROFILE = "tests.support.toy_grpc:ProfileModel"
CUBE = "tests.support.toy_grpc:CubeModel"
ALIAS = "tests.support.toy_grpc:AliasModel"
FULL_PROFILE = {
    "name": "Ada", "kind": "person", "age": 36, "score": 0.5, "active": False, "tags": ["math", "engines"],
    "address": {"street": "St James's Square", "number": 12},
    "previous": [{"street": "Marylebone", "number": 1}, {"street": "Ockham", "number": 2}],
    "matrix": [[1.0, 2.5], [], [-3.0]],
}


def served(class_path: str) -> ServedModel:
    return build_model(ModelSettings(class_path=class_path))


def message_types(proto: ModelProto) -> tuple[type[Message], type[Message]]:
    """The input and output message classes, built from the descriptor the way the server does."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto.file)
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{proto.package}.{name}"))
        for name in (proto.input_message, proto.output_message)
    )


def fields(message: descriptor_pb2.DescriptorProto) -> dict[str, tuple[int, int, bool, str]]:
    """name -> (label, type, proto3_optional, type_name) for each field of a message."""
    return {f.name: (f.label, f.type, f.proto3_optional, f.type_name) for f in message.field}


def message(proto: ModelProto, name: str) -> descriptor_pb2.DescriptorProto:
    return next(m for m in proto.file.message_type if m.name == name)


def round_trip(proto: ModelProto, data: dict[str, Any]) -> dict[str, Any]:
    """fill a request message, send it over the wire (serialise, parse), read it back with to_dict."""
    request_type, _ = message_types(proto)
    request = request_type()
    fill(request, data, proto.wrappers)
    return to_dict(request_type.FromString(request.SerializeToString()), proto.wrappers)


# -- describe + render -----------------------------------------------------------------------------------


def test_iris_is_four_optional_doubles_in_and_an_optional_string_out() -> None:
    proto = describe(served(IRIS))
    assert (proto.package, proto.service, proto.method_path) == (
        "hostd.models.iris_model", "IrisModel", "/hostd.models.iris_model.IrisModel/Predict")
    assert (proto.input_message, proto.output_message) == ("IrisModelInput", "IrisModelOutput")
    optional_double = (FDP.LABEL_OPTIONAL, FDP.TYPE_DOUBLE, True, "")
    assert fields(message(proto, "IrisModelInput")) == {
        "sepal_length": optional_double, "sepal_width": optional_double,
        "petal_length": optional_double, "petal_width": optional_double,
    }
    assert fields(message(proto, "IrisModelOutput")) == {"species": (FDP.LABEL_OPTIONAL, FDP.TYPE_STRING, True, "")}
    assert proto.wrappers == set()

    text = render(proto)
    assert "package hostd.models.iris_model;" in text
    assert ("message IrisModelInput {\n  optional double sepal_length = 1;\n  optional double sepal_width = 2;\n"
            "  optional double petal_length = 3;\n  optional double petal_width = 4;\n}") in text
    assert "message IrisModelOutput {\n  optional string species = 1;\n}" in text
    assert "service IrisModel {\n  rpc Predict(IrisModelInput) returns (IrisModelOutput);\n}" in text


def test_digits_image_is_repeated_rows_of_repeated_int64() -> None:
    proto = describe(served(DIGITS))
    row = "hostd.models.digits_model.DigitsModelInput.ImageRow"
    assert fields(message(proto, "DigitsModelInput")) == {
        "image": (FDP.LABEL_REPEATED, FDP.TYPE_MESSAGE, False, f".{row}")}
    (nested,) = message(proto, "DigitsModelInput").nested_type
    assert nested.name == "ImageRow"
    assert fields(nested) == {"values": (FDP.LABEL_REPEATED, FDP.TYPE_INT64, False, "")}
    assert proto.wrappers == {row}
    assert fields(message(proto, "DigitsModelOutput")) == {
        "digit": (FDP.LABEL_OPTIONAL, FDP.TYPE_INT64, True, ""),
        "probability": (FDP.LABEL_OPTIONAL, FDP.TYPE_DOUBLE, True, ""),
    }

    text = render(proto)
    assert ("message DigitsModelInput {\n  message ImageRow {\n    repeated int64 values = 1;\n  }\n"
            "  repeated DigitsModelInput.ImageRow image = 1;\n}") in text


def test_nested_models_enums_lists_and_optionals() -> None:
    proto = describe(served(PROFILE))
    package = "hostd.models.profile"
    assert fields(message(proto, "ProfileInput")) == {
        "name": (FDP.LABEL_OPTIONAL, FDP.TYPE_STRING, True, ""),
        "kind": (FDP.LABEL_OPTIONAL, FDP.TYPE_STRING, True, ""),  # an enum travels as its string value
        "age": (FDP.LABEL_OPTIONAL, FDP.TYPE_INT64, True, ""),  # Optional[int] is an int with presence
        "score": (FDP.LABEL_OPTIONAL, FDP.TYPE_DOUBLE, True, ""),
        "active": (FDP.LABEL_OPTIONAL, FDP.TYPE_BOOL, True, ""),
        "tags": (FDP.LABEL_REPEATED, FDP.TYPE_STRING, False, ""),
        "address": (FDP.LABEL_OPTIONAL, FDP.TYPE_MESSAGE, False, f".{package}.Address"),
        "previous": (FDP.LABEL_REPEATED, FDP.TYPE_MESSAGE, False, f".{package}.Address"),
        "matrix": (FDP.LABEL_REPEATED, FDP.TYPE_MESSAGE, False, f".{package}.ProfileInput.MatrixRow"),
    }
    assert fields(message(proto, "Address")) == {
        "street": (FDP.LABEL_OPTIONAL, FDP.TYPE_STRING, True, ""),
        "number": (FDP.LABEL_OPTIONAL, FDP.TYPE_INT64, True, ""),
    }
    # The nested model is declared once although both schemas use it.
    assert [m.name for m in proto.file.message_type].count("Address") == 1
    assert fields(message(proto, "ProfileOutput"))["address"] == (
        FDP.LABEL_OPTIONAL, FDP.TYPE_MESSAGE, False, f".{package}.Address")

    text = render(proto)
    assert "message Address {\n  optional string street = 1;\n  optional int64 number = 2;\n}" in text
    for line in ("optional string kind = 2;", "optional int64 age = 3;", "repeated string tags = 6;",
                 "Address address = 7;", "repeated Address previous = 8;",
                 "repeated ProfileInput.MatrixRow matrix = 9;", "repeated double values = 1;"):
        assert f"  {line}\n" in text, line


SAMPLES = [
    (IRIS, {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}),
    (DIGITS, {"image": [[row * 8 + column for column in range(8)] for row in range(8)]}),
    (DIABETES, {"age": 59.0, "sex": 2.0, "bmi": 32.1, "bp": 101.0, "s1": 157.0, "s2": 93.2, "s3": 38.0,
                "s4": 4.0, "s5": 4.8598, "s6": 87.0}),
    (PROFILE, FULL_PROFILE),
]


@pytest.mark.parametrize(("class_path", "sample"), SAMPLES, ids=["iris", "digits", "diabetes", "profile"])
def test_rendered_text_compiles_with_stock_protoc(class_path: str, sample: dict[str, Any], tmp_path: Path) -> None:
    proto = describe(served(class_path))
    source = tmp_path / Path(proto.file.name).name
    source.write_text(render(proto))
    messages, services = import_generated(source, tmp_path / "out")

    # protoc's file describes the same messages and service as the descriptor hostd serves.
    compiled = descriptor_pb2.FileDescriptorProto()
    messages.DESCRIPTOR.CopyToProto(compiled)
    assert compiled.package == proto.package
    for ours, theirs in zip(proto.file.message_type, compiled.message_type, strict=True):
        assert (ours.name, fields(ours)) == (theirs.name, fields(theirs))
    assert [(m.name, m.input_type, m.output_type) for m in compiled.service[0].method] == [
        ("Predict", f".{proto.package}.{proto.input_message}", f".{proto.package}.{proto.output_message}")]
    assert hasattr(services, f"{proto.service}Stub") and hasattr(services, f"{proto.service}Servicer")

    # What a protoc-generated client sends is what hostd reads.
    sent = getattr(messages, proto.input_message)()
    fill(sent, sample, proto.wrappers)
    request_type, _ = message_types(proto)
    assert to_dict(request_type.FromString(sent.SerializeToString()), proto.wrappers) == sample


def test_rendered_iris_messages_interoperate_with_protoc_code(tmp_path: Path) -> None:
    proto = describe(served(IRIS))
    source = tmp_path / "iris_model.proto"
    source.write_text(render(proto))
    messages, _ = import_generated(source, tmp_path / "out")
    request_type, reply_type = message_types(proto)

    sent = messages.IrisModelInput(sepal_length=5.1, sepal_width=3.5, petal_length=1.4)  # petal_width left out
    received = to_dict(request_type.FromString(sent.SerializeToString()), proto.wrappers)
    assert received == {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}

    reply = reply_type()
    fill(reply, {"species": "Iris setosa"}, proto.wrappers)
    assert messages.IrisModelOutput.FromString(reply.SerializeToString()).species == "Iris setosa"


# -- types protobuf cannot express -------------------------------------------------------------------


@pytest.mark.parametrize(("class_path", "model", "field", "says"), [
    ("tests.support.toy_grpc:UntypeableUnion", "union_model", "UnionInput.value", "union"),
    ("tests.support.toy_grpc:UntypeableDict", "dict_model", "DictInput.weights", "object"),
    ("tests.support.toy_grpc:UntypeableAny", "any_model", "AnyInput.payload", "untyped"),
    ("tests.support.toy_grpc:UntypeableDashed", "dashed_model", "DashedInput.sepal-length",
     "not a valid protobuf field name"),
], ids=["union", "dict", "any", "alias-not-an-identifier"])
def test_proto_error_names_the_model_and_the_field(class_path: str, model: str, field: str, says: str) -> None:
    with pytest.raises(ProtoError) as caught:
        describe(served(class_path))
    message = str(caught.value)
    assert message.startswith(f"{model}: ")
    assert f"'{field}'" in message
    assert says in message


# -- to_dict / fill ------------------------------------------------------------------------------------


def test_full_profile_round_trips_nested_models_and_lists() -> None:
    proto = describe(served(PROFILE))
    assert round_trip(proto, FULL_PROFILE) == FULL_PROFILE
    assert ProfileInput.model_validate(round_trip(proto, FULL_PROFILE)) == ProfileInput.model_validate(FULL_PROFILE)


def test_absent_optional_fields_stay_absent_and_false_or_zero_stay_present() -> None:
    proto = describe(served(PROFILE))
    received = round_trip(proto, {"name": "Bo", "kind": "company", "age": 0, "active": False})
    # Presence tells "not sent" (the schema's default applies) from zero / false.
    assert received == {"name": "Bo", "kind": "company", "age": 0, "active": False,
                        "tags": [], "previous": [], "matrix": []}
    assert ProfileInput.model_validate(received) == ProfileInput(name="Bo", kind=Kind.company, age=0, active=False)

    minimal = round_trip(proto, {"name": "Cy", "kind": "person"})
    assert "age" not in minimal and "score" not in minimal and "address" not in minimal and "active" not in minimal
    assert ProfileInput.model_validate(minimal).active is True


def test_fill_skips_none_outputs() -> None:
    proto = describe(served(PROFILE))
    _, reply_type = message_types(proto)
    reply = reply_type()
    fill(reply, {"summary": "x", "kind": "person", "age": None, "tags": [], "address": None, "row_sums": [1.5]},
         proto.wrappers)
    parsed = reply_type.FromString(reply.SerializeToString())
    assert not parsed.HasField("age") and not parsed.HasField("address")
    assert to_dict(parsed, proto.wrappers) == {"summary": "x", "kind": "person", "tags": [], "row_sums": [1.5]}


def test_digits_image_round_trips_as_rows() -> None:
    proto = describe(served(DIGITS))
    image = load_digits().images[7].astype(int).tolist()
    assert round_trip(proto, {"image": image}) == {"image": image}


def test_three_deep_lists_build_and_round_trip(tmp_path: Path) -> None:
    proto = describe(served(CUBE))
    source = tmp_path / "cube.proto"
    source.write_text(render(proto))
    import_generated(source, tmp_path / "out")  # stock protoc accepts the text...
    # ...and the descriptor hostd serves must build too (the server adds it to a pool at start-up).
    cube = [[[1, 2], [3]], [[4, 5, 6]], []]
    assert round_trip(proto, {"cube": cube}) == {"cube": cube}


# -- TypedService.predict, in-process -----------------------------------------------------------------


def typed_service(class_path: str) -> TypedService:
    registry = Registry()
    registry.add(served(class_path))
    plane = DataPlane(registry)
    plane.set_ready()
    proto = describe(next(iter(registry)))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto.file)
    return TypedService(plane, proto, pool, InFlight())


def test_typed_service_predicts_iris() -> None:
    service = typed_service(IRIS)
    request = service.request_type(sepal_length=6.7, sepal_width=3.0, petal_length=5.2, petal_width=2.3)
    reply = anyio.run(service.predict, request, Call())
    assert reply.species == "Iris virginica"


def test_typed_service_reports_a_missing_field_by_name() -> None:
    service = typed_service(IRIS)
    request = service.request_type(sepal_length=6.7, sepal_width=3.0, petal_length=5.2)
    with pytest.raises(InvalidInput, match="petal_width: Field required"):
        anyio.run(service.predict, request, Call())


def test_typed_service_answers_a_nested_profile() -> None:
    service = typed_service(PROFILE)
    request = service.request_type()
    fill(request, FULL_PROFILE, service.proto.wrappers)
    reply = anyio.run(service.predict, request, Call())
    assert to_dict(reply, service.proto.wrappers) == {
        "summary": "Ada (person) at 12 St James's Square, 2 previous", "kind": "person", "age": 36,
        "tags": ["MATH", "ENGINES"], "address": {"street": "St James's Square", "number": 12},
        "row_sums": [3.5, 0.0, -3.0],
    }


def test_typed_service_fills_aliased_output_fields() -> None:
    # The message fields are the schema's (alias) names: petalLength in, speciesName out.
    service = typed_service(ALIAS)
    reply = anyio.run(service.predict, service.request_type(petalLength=2.5), Call())
    assert reply.HasField("speciesName") and reply.speciesName == "long 2.5"
