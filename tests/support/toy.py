"""Small models for tests: fast, slow, gated, failing, async, and one written against ml_base."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import structlog
from pydantic import BaseModel, Field, SecretStr, field_validator

from hostd import MLModel, MLModelDecorator


class EchoInput(BaseModel):
    x: float = Field(ge=-1000, le=1000)
    delay_ms: float = Field(default=0, ge=0, le=60_000)
    fail: bool = False
    text: str = ""


class EchoOutput(BaseModel):
    y: float
    text: str = ""


class EchoModel(MLModel):
    """Doubles x; sleeps delay_ms (in the worker thread); raises when fail is true."""

    display_name = "Echo"
    description = "Doubles x"
    input_schema = EchoInput
    output_schema = EchoOutput

    def __init__(self, name: str = "echo", version: str = "1.0.0", factor: float = 2.0) -> None:
        self._name, self._version, self.factor = name, version, factor
        self.batches: list[int] = []
        self.running, self.most_running = 0, 0  # predict_batch calls running at once
        self._lock = threading.Lock()

    @property
    def qualified_name(self) -> str:  # type: ignore[override]
        return self._name

    @property
    def version(self) -> str:  # type: ignore[override]
        return self._version

    def predict(self, data: EchoInput) -> EchoOutput:
        if data.delay_ms:
            time.sleep(data.delay_ms / 1000)
        if data.fail:
            raise RuntimeError("asked to fail")
        return EchoOutput(y=data.x * self.factor, text=data.text.upper())

    def predict_batch(self, data: list[EchoInput]) -> list[EchoOutput]:
        self.batches.append(len(data))
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            return [self.predict(item) for item in data]
        finally:
            with self._lock:
                self.running -= 1


class AsyncEchoModel(EchoModel):
    async def predict(self, data: EchoInput) -> EchoOutput:  # type: ignore[override]
        await asyncio.sleep(data.delay_ms / 1000)
        return EchoOutput(y=data.x * self.factor)


class BadOutputModel(EchoModel):
    def predict(self, data: EchoInput) -> Any:
        return {"nope": 1}


class FailsToLoad(EchoModel):
    def __init__(self) -> None:
        raise FileNotFoundError("parameters.skops is missing")


class PlusOne(MLModelDecorator):
    """Adds one to every prediction (a hostd decorator)."""

    def predict(self, data: EchoInput) -> EchoOutput:
        result = self._model.predict(data)
        return EchoOutput(y=result.y + self._configuration.get("amount", 1), text=result.text)


class GatedInput(EchoInput):
    gate: str = ""  # a file path: the call waits until the file exists ("" : no wait)


class GatedEcho(EchoModel):
    """EchoModel whose calls wait until the file named by ``gate`` exists (at most ``open_within_s``).

    A test keeps requests in the model for exactly as long as it needs, in this process or in a hostd
    it started, and lets them go by creating the file: no delay to outlast, however busy the machine.
    """

    input_schema = GatedInput

    def __init__(self, name: str = "echo", version: str = "1.0.0", open_within_s: float = 30) -> None:
        super().__init__(name, version)
        self.open_within_s = open_within_s

    def predict(self, data: GatedInput) -> EchoOutput:  # type: ignore[override]
        wait_for_gate(data.gate, self.open_within_s)
        return super().predict(data)


def wait_for_gate(gate: str, open_within_s: float) -> None:
    if not gate:
        return
    deadline = time.monotonic() + open_within_s
    while not os.path.exists(gate):
        if time.monotonic() > deadline:  # a test that never opens it must not hold a worker forever
            raise RuntimeError(f"gate {gate} was not opened within {open_within_s} s")
        time.sleep(0.005)


class CheckedInput(EchoInput):
    # Validating this row waits until the file named here exists (at most 3 s), then the field holds
    # "open" or "shut": a test can tell whether validation let the event loop run on meanwhile.
    check_gate: str = ""

    @field_validator("check_gate")
    @classmethod
    def _wait_for_gate(cls, gate: str) -> str:
        if not gate:
            return ""
        try:
            wait_for_gate(gate, 3)
        except RuntimeError:
            return "shut"
        return "open"


class CheckedEcho(EchoModel):
    """EchoModel that answers each row's ``check_gate`` outcome as its text."""

    input_schema = CheckedInput

    def predict(self, data: CheckedInput) -> EchoOutput:  # type: ignore[override]
        return EchoOutput(y=data.x * self.factor, text=data.check_gate)


#: Names and versions of the ClosableEcho models closed so far (the repository tests read it).
CLOSED: list[tuple[str, str]] = []


class ClosableEcho(EchoModel):
    """An echo model that records its close() (hostd calls it when a model is unloaded)."""

    def close(self) -> None:
        CLOSED.append((self.qualified_name, self.version))


class HeldEcho(ClosableEcho):
    """Every call waits until the file ``gate`` (configuration) exists: a model that is slow until
    the test says otherwise (a slow shadow, a model still busy while it is unloaded)."""

    def __init__(self, gate: str, name: str = "echo", version: str = "1.0.0", factor: float = 2.0) -> None:
        super().__init__(name, version, factor)
        self.gate = gate

    def predict(self, data: EchoInput) -> EchoOutput:
        wait_for_gate(self.gate, 30)
        return super().predict(data)


class SlowToLoad(EchoModel):
    """An echo model whose loading waits until the file ``gate`` exists (a test does something
    meanwhile, e.g. signals the daemon while its models load)."""

    def __init__(self, gate: str) -> None:
        super().__init__()
        wait_for_gate(gate, 30)


class SecretInput(EchoInput):
    token: SecretStr = SecretStr("")  # dumped as "**********" whatever it holds


class SecretEcho(EchoModel):
    """An echo whose input holds a secret: rows that differ only there would share a cache key."""

    input_schema = SecretInput


class TracedEcho(EchoModel):
    """EchoModel instrumented as a user would: its own OpenTelemetry span and a log line per call."""

    def predict_batch(self, data: list[EchoInput]) -> list[EchoOutput]:
        from opentelemetry import trace
        with trace.get_tracer("toy").start_as_current_span("toy.predict_batch"):
            structlog.get_logger("toy").info("toy model called", rows=len(data))
            return super().predict_batch(data)
