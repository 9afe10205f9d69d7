"""Typed per-model gRPC services, as the series compiled them: a message per schema, a Predict rpc.

A model's pydantic schemas become a protobuf file descriptor (``describe``), which is both written
out as a ``.proto`` (``render``, for ``hostd proto``) and served with dynamic messages
(``TypedService``), so a client compiled from that file by stock protoc can call the model.
Scalar fields are ``optional`` so a missing field is reported as missing, not read as zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpclib.const import Handler
from pydantic import BaseModel

from hostd.auth import Scope
from hostd.dataplane import DataPlane
from hostd.registry import ServedModel
from hostd.tasks import InFlight
from hostd_grpc.unary import DEFAULT_LIMITS, Call, Guarded, RequestLimits, unary_handler

FDP = descriptor_pb2.FieldDescriptorProto
SCALARS = {"number": FDP.TYPE_DOUBLE, "integer": FDP.TYPE_INT64, "boolean": FDP.TYPE_BOOL,
           "string": FDP.TYPE_STRING}
TYPE_NAMES = {FDP.TYPE_DOUBLE: "double", FDP.TYPE_INT64: "int64", FDP.TYPE_BOOL: "bool",
              FDP.TYPE_STRING: "string"}
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ProtoError(Exception):
    """A model's schema uses a type protobuf cannot express."""


@dataclass
class ModelProto:
    """The protobuf description of one model's typed service."""

    model: str
    package: str
    service: str
    input_message: str
    output_message: str
    file: descriptor_pb2.FileDescriptorProto
    wrappers: set[str] = field(default_factory=set)  # full names of row messages for nested lists

    @property
    def method_path(self) -> str:
        return f"/{self.package}.{self.service}/Predict"


def describe(served: ServedModel) -> ModelProto:
    """Build the file descriptor for ``served``; ProtoError names the model and field it cannot map."""
    name = _identifier(served.name)
    package = f"hostd.models.{name}"
    proto = ModelProto(served.name, package, _camel(name), "", "",
                       descriptor_pb2.FileDescriptorProto(name=f"hostd/models/{name}.proto", package=package,
                                                          syntax="proto3"))
    builder = _Builder(proto)
    proto.input_message = builder.schema_message(served.model.input_schema)
    proto.output_message = builder.schema_message(served.model.output_schema)
    service = proto.file.service.add(name=proto.service)
    service.method.add(name="Predict", input_type=f".{package}.{proto.input_message}",
                       output_type=f".{package}.{proto.output_message}")
    return proto


class _Builder:
    def __init__(self, proto: ModelProto) -> None:
        self.proto = proto
        self.done: set[str] = set()

    def schema_message(self, schema: type[BaseModel]) -> str:
        json_schema = schema.model_json_schema()
        self.defs = json_schema.get("$defs", {})
        return self.message(schema.__name__, json_schema)

    def message(self, name: str, schema: dict[str, Any]) -> str:
        if name not in self.done:
            self.done.add(name)
            message = self.proto.file.message_type.add(name=name)
            for number, (field_name, prop) in enumerate(schema.get("properties", {}).items(), start=1):
                self.field(message, f"{self.proto.package}.{name}", number, field_name, prop,
                           f"{name}.{field_name}")
        return name

    def field(self, message: descriptor_pb2.DescriptorProto, scope: str, number: int, name: str,
              prop: dict[str, Any], where: str) -> None:
        """Add field ``name`` to ``message``, whose full name is ``scope``."""
        if not IDENTIFIER.match(name):
            raise ProtoError(f"{self.proto.model}: field '{where}' is not a valid protobuf field name")
        prop = self.resolve(prop)
        item = message.field.add(name=name, number=number, json_name=name)
        if prop.get("type") == "array":
            item.label = FDP.LABEL_REPEATED
            self.element(message, scope, item, prop.get("items", {}), where)
            return
        item.label = FDP.LABEL_OPTIONAL
        self.element(message, scope, item, prop, where)
        if item.type != FDP.TYPE_MESSAGE:  # proto3 `optional`: presence for scalars
            item.proto3_optional = True
            item.oneof_index = len(message.oneof_decl)
            message.oneof_decl.add(name=f"_{name}")

    def element(self, message: descriptor_pb2.DescriptorProto, scope: str, item: Any, prop: dict[str, Any],
                where: str) -> None:
        prop = self.resolve(prop)
        kind = prop.get("type")
        if kind in SCALARS:
            item.type = SCALARS[kind]
        elif kind == "object" and "properties" in prop:
            item.type = FDP.TYPE_MESSAGE
            item.type_name = f".{self.proto.package}.{self.message(prop.get('title') or _camel(item.name), prop)}"
        elif kind == "array":  # a list of lists: protobuf needs a message per row
            row = message.nested_type.add(name=f"{_camel(item.name)}Row")
            inner = row.field.add(name="values", number=1, json_name="values", label=FDP.LABEL_REPEATED)
            self.element(row, f"{scope}.{row.name}", inner, prop.get("items", {}), where + "[]")
            item.type, item.type_name = FDP.TYPE_MESSAGE, f".{scope}.{row.name}"
            self.proto.wrappers.add(item.type_name.lstrip("."))
        else:
            described = prop.get("type") or ("a union" if "anyOf" in prop else "an untyped value")
            raise ProtoError(f"{self.proto.model}: field '{where}' has type {described}, which protobuf "
                             "cannot express (use numbers, integers, booleans, strings, lists or nested models)")

    def resolve(self, prop: dict[str, Any]) -> dict[str, Any]:
        """Follow $ref; Optional[X] is X (every scalar field has presence anyway)."""
        if "$ref" in prop:
            return self.resolve(self.defs[prop["$ref"].rsplit("/", 1)[-1]])
        options = [option for option in prop.get("anyOf", []) if option.get("type") != "null"]
        if "anyOf" in prop and len(options) == 1:
            return self.resolve(options[0])
        return prop


def _identifier(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return cleaned if IDENTIFIER.match(cleaned) else f"m_{cleaned}"


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part)


# -- .proto text -----------------------------------------------------------------------------------


def render(proto: ModelProto) -> str:
    """The ``.proto`` source of ``proto.file`` (only the subset ``describe`` produces)."""
    lines = [f"// Typed gRPC service for model '{proto.model}', generated by `hostd proto`.",
             'syntax = "proto3";', "", f"package {proto.package};", ""]
    for message in proto.file.message_type:
        lines += _render_message(message, proto.package, "")
        lines.append("")
    service = proto.file.service[0]
    lines += [f"service {service.name} {{",
              f"  rpc Predict({proto.input_message}) returns ({proto.output_message});", "}", ""]
    return "\n".join(lines)


def _render_message(message: descriptor_pb2.DescriptorProto, package: str, indent: str) -> list[str]:
    lines = [f"{indent}message {message.name} {{"]
    for nested in message.nested_type:
        lines += _render_message(nested, package, indent + "  ")
    for item in message.field:
        label = "repeated " if item.label == FDP.LABEL_REPEATED else ("optional " if item.proto3_optional else "")
        kind = item.type_name.removeprefix(f".{package}.") if item.type == FDP.TYPE_MESSAGE \
            else TYPE_NAMES[item.type]
        lines.append(f"{indent}  {label}{kind} {item.name} = {item.number};")
    lines.append(f"{indent}}}")
    return lines


# -- serving ---------------------------------------------------------------------------------------


class TypedService:
    """Serves ``Predict`` for one model with dynamic messages built from its descriptor."""

    def __init__(self, dataplane: DataPlane, proto: ModelProto, pool: descriptor_pool.DescriptorPool,
                 in_flight: InFlight, limits: RequestLimits = DEFAULT_LIMITS) -> None:
        self.dataplane, self.proto, self.in_flight = dataplane, proto, in_flight
        self.limits = limits
        self.request_type = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{proto.package}.{proto.input_message}"))
        self.reply_type = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{proto.package}.{proto.output_message}"))

    def __mapping__(self) -> dict[str, Handler]:
        needs = Guarded(self.dataplane, lambda request: (Scope.INFER, self.proto.model))
        return {self.proto.method_path: unary_handler(self.predict, self.request_type, self.reply_type,
                                                      self.in_flight, self.limits, needs)}

    async def predict(self, request: Message, call: Call) -> Message:
        refused = self.dataplane.refusal(self.proto.model, transport="grpc", client=call.client)
        if refused is not None:
            raise refused
        with self.dataplane.refusing("grpc", self.proto.model):
            data = await call.run(to_dict, request, self.proto.wrappers)
        result = await self.dataplane.predict(self.proto.model, data, transport="grpc", deadline_s=call.deadline_s,
                                              client=call.client)
        return await call.run(self._reply, result.output)

    def _reply(self, output: dict[str, Any]) -> Message:
        reply = self.reply_type()
        fill(reply, output, self.proto.wrappers)
        return reply


def to_dict(message: Message, wrappers: set[str]) -> dict[str, Any]:
    data = {}
    for item in message.DESCRIPTOR.fields:
        if item.has_presence and not message.HasField(item.name):
            continue  # absent: the schema says whether that is allowed
        data[item.name] = _to_value(item, getattr(message, item.name), wrappers)
    return data


def _to_value(item: FieldDescriptor, value: Any, wrappers: set[str]) -> Any:
    if item.is_repeated:
        return [_to_one(item, element, wrappers) for element in value]
    return _to_one(item, value, wrappers)


def _to_one(item: FieldDescriptor, value: Any, wrappers: set[str]) -> Any:
    if item.message_type is None:
        return value
    if item.message_type.full_name in wrappers:
        return _to_value(item.message_type.fields_by_name["values"], value.values, wrappers)
    return to_dict(value, wrappers)


def fill(message: Message, data: dict[str, Any], wrappers: set[str]) -> None:
    for item in message.DESCRIPTOR.fields:
        value = data.get(item.name)
        if value is None:
            continue
        if item.is_repeated:
            _fill_repeated(getattr(message, item.name), item, value, wrappers)
        elif item.message_type is not None:
            fill(getattr(message, item.name), value, wrappers)
        else:
            setattr(message, item.name, value)


def _fill_repeated(container: Any, item: FieldDescriptor, values: list[Any], wrappers: set[str]) -> None:
    if item.message_type is None:
        container.extend(values)
        return
    for value in values:
        element = container.add()
        if item.message_type.full_name in wrappers:
            _fill_repeated(element.values, item.message_type.fields_by_name["values"], value, wrappers)
        else:
            fill(element, value, wrappers)
