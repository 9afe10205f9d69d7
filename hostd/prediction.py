"""A prediction as the data plane answers it, and the id every request is known by."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

MAX_REQUEST_ID = 256  # characters: a request id may come from the client (X-Request-Id, an envelope's id)


def new_request_id() -> str:
    """An id for a request whose client sent none (every answer carries one, for feedback and logs):
    128 random bits as 32 hex digits, like a uuid4's hex (a third of the cost: this runs per request)."""
    return os.urandom(16).hex()


@dataclass(frozen=True, slots=True)
class Prediction:
    model: str
    version: str
    outputs: list[dict[str, Any]]  # one JSON-ready dict per input row
    request_id: str | None = None
    cached: bool | None = None  # every row answered from the cache; None: the model has no cache

    @property
    def output(self) -> dict[str, Any]:
        return self.outputs[0]
