"""hostd_arq.serializer: arq records as msgpack data; failures as readable maps; pickles refused."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path
from typing import Any

import msgpack
import pytest
from arq.jobs import DeserializationError, deserialize_job_raw, deserialize_result, serialize_result
from arq.worker import JobExecutionFailed
from hostd_arq.plugin import ArqSettings
from hostd_arq.serializer import codec, deserialize, deserialize_errors, failure, serialize
from pydantic import ValidationError

from hostd.errors import ErrorCode, HostdError, InvalidInput, ModelError, ModelNotFound


def result_bytes(success: bool, result: Any) -> bytes:
    record = serialize_result("predict", ("iris_model", {"x": 1}), {"version": None}, 1, 0, success, result, 0, 1,
                              "ref", "hostd:queue", "job-1", serializer=serialize)
    assert record is not None
    return record


def test_a_job_round_trips_as_plain_msgpack() -> None:
    job = {"t": 1, "f": "predict", "a": ["iris_model", {"x": 1.5}], "k": {"version": "1.0.0"}, "et": 7}
    assert msgpack.unpackb(serialize(job)) == job
    assert deserialize_job_raw(msgpack.packb(job), deserializer=deserialize) == \
        ("predict", ["iris_model", {"x": 1.5}], {"version": "1.0.0"}, 1, 7)


def test_a_pickled_job_is_refused_without_being_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    class Marker:
        def __reduce__(self) -> tuple[Any, tuple[str, str]]:
            return open, (str(marker), "w")

    payload = pickle.dumps({"t": 1, "f": "predict", "a": [Marker()], "k": {}, "et": 0})
    with pytest.raises(DeserializationError):
        deserialize_job_raw(payload, deserializer=deserialize)
    assert not marker.exists()


@pytest.mark.parametrize("data", [msgpack.packb([1, 2]), msgpack.packb("predict")])
def test_a_record_that_is_not_a_map_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="is a map"):
        deserialize(data)


def test_a_success_is_stored_as_is() -> None:
    info = deserialize_result(result_bytes(True, {"species": "Iris setosa"}), deserializer=msgpack.unpackb)
    assert info.success and info.result == {"species": "Iris setosa"}


def test_a_hostd_error_is_stored_as_its_code_message_and_details() -> None:
    exc = InvalidInput("invalid input for model 'iris_model': bad sepal_width", [{"field": "sepal_width"}])
    info = deserialize_result(result_bytes(False, exc), deserializer=msgpack.unpackb)  # a plain client
    assert not info.success
    assert info.result == {"code": "INVALID_INPUT", "message": exc.message, "details": [{"field": "sepal_width"}],
                           "type": "InvalidInput"}


def test_details_that_are_not_data_are_stored_as_text() -> None:
    exc = InvalidInput("bad input", [{"field": "x", "ctx": ValueError("too big")}])
    info = deserialize_result(result_bytes(False, exc), deserializer=msgpack.unpackb)
    assert info.result["code"] == "INVALID_INPUT" and info.result["message"] == "bad input"
    assert info.result["details"] == [str(exc.details[0])]


@pytest.mark.parametrize(("exc", "code", "message"), [
    (TimeoutError(), ErrorCode.TIMEOUT, "TimeoutError"),
    (DeserializationError("unable to deserialize job"), ErrorCode.INVALID_INPUT,
     "DeserializationError: unable to deserialize job"),
    (JobExecutionFailed("max 5 retries exceeded"), ErrorCode.MODEL_ERROR,
     "JobExecutionFailed: max 5 retries exceeded"),
    (asyncio.CancelledError(), ErrorCode.MODEL_ERROR, "CancelledError"),
])
def test_arq_own_failures_get_a_code_too(exc: BaseException, code: ErrorCode, message: str) -> None:
    assert failure(exc) == {"code": code.value, "message": message, "details": [], "type": type(exc).__name__}


@pytest.mark.parametrize("exc", [InvalidInput("bad", [{"field": "x"}]), ModelNotFound("no model"),
                                 ModelError("model 'echo' failed: RuntimeError: asked to fail")])
def test_a_hostd_aware_client_gets_the_hostd_error_back(exc: HostdError) -> None:
    info = deserialize_result(result_bytes(False, exc), deserializer=deserialize_errors)
    assert type(info.result) is type(exc)
    assert (info.result.message, info.result.details) == (exc.message, exc.details)


def test_a_hostd_aware_client_gets_arqs_timeout_back_as_a_timeout_error() -> None:
    info = deserialize_result(result_bytes(False, TimeoutError()), deserializer=deserialize_errors)
    assert isinstance(info.result, asyncio.TimeoutError)


def test_an_unknown_code_or_type_is_a_plain_hostd_error() -> None:
    stored = {"s": False, "r": {"code": "NOPE", "message": "m", "type": "os.system"}}
    rebuilt = deserialize_errors(msgpack.packb(stored))
    assert type(rebuilt["r"]) is HostdError and rebuilt["r"].message == "m"


def test_a_successful_map_is_never_turned_into_an_error() -> None:
    output = {"code": "INVALID_INPUT", "message": "a model may answer this"}
    assert deserialize_errors(msgpack.packb({"s": True, "r": output}))["r"] == output


def test_msgpack_is_the_default_and_pickle_an_explicit_choice() -> None:
    assert ArqSettings().serializer == "msgpack"
    assert codec("msgpack") == (serialize, deserialize)
    assert codec(ArqSettings(serializer="pickle").serializer) == (None, None)  # arq's default: pickle
    with pytest.raises(ValidationError):
        ArqSettings(serializer="json")  # type: ignore[arg-type]
