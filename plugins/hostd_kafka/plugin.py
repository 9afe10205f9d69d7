"""The Kafka transport (aiokafka): a consumer group on input_topic, replies to output_topic.

Each request yields exactly one message: the envelope reply on ``output_topic`` (same key) or, on
any error, a dead letter on ``dead_letter_topic`` with the original value and where it came from.
No output is bigger than ``max_message_bytes``: a dead letter cuts the original short (with
``value_truncated``, ``value_bytes`` and ``value_sha256``), a reply too big to send becomes a
dead letter, and a record key over ``max_key_bytes`` is not predicted: its dead letter's key is the
key's SHA-256 (with ``key_truncated``, ``key_bytes`` and ``key_sha256``). So no single message can
fail a batch and stall its partition.
Offsets are committed only after every output before them is acknowledged (acks=all): after a
crash messages may be processed twice, never lost. A broker that is down (at start or later) is
retried with backoff while the daemon's other transports keep serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import structlog
from anyio.abc import TaskStatus
from pydantic import ConfigDict, Field, model_validator

from hostd.hookspecs import RegisterTransport, hookimpl
from hostd.reconnect import RetrySettings, reconnect
from hostd.transports import Transport, TransportContext

log = structlog.get_logger("hostd.kafka")


def _path(folder: Path, name: str | None) -> str | None:
    return str(folder / name) if name is not None else None


class KafkaSettings(RetrySettings):
    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "hostd"
    input_topic: str = "hostd.requests"
    output_topic: str = "hostd.predictions"
    dead_letter_topic: str = "hostd.dead-letters"
    # Ground-truth labels, {"model", "request_id", "label"} each (the envelope's feedback op); an
    # invalid one goes to the dead letters, one taken produces nothing. None: no feedback topic.
    feedback_topic: str | None = None
    client_id: str = "hostd"
    max_batch: int = Field(default=500, ge=1)  # messages handed to the data plane per poll
    max_message_bytes: int = Field(default=1 << 20, ge=1024)
    # A longer record key is not copied into the output: its SHA-256 (hex) is the output's key.
    max_key_bytes: int = Field(default=4096, ge=64)

    # The broker's security, as aiokafka names it. Files are relative to the config's folder; a
    # password comes from sasl_password_file, or from the environment: sasl_password: ${KAFKA_PASSWORD}.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: str | None = None  # the CA that signs the broker's certificate (default: the system's)
    ssl_certfile: str | None = None  # a client certificate, for brokers that require one
    ssl_keyfile: str | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = None
    sasl_password_file: str | None = None

    @model_validator(mode="after")
    def _credentials_for_sasl(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and (
                self.sasl_username is None or (self.sasl_password is None) == (self.sasl_password_file is None)):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_username and one of "
                             "sasl_password or sasl_password_file")
        return self

    def security(self, folder: Path) -> dict[str, Any]:
        """aiokafka's keyword arguments for the broker's security (for the consumer and the producer)."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=_path(folder, self.ssl_cafile), certfile=_path(folder, self.ssl_certfile),
                keyfile=_path(folder, self.ssl_keyfile))
        if self.security_protocol.startswith("SASL"):
            password = self.sasl_password
            if self.sasl_password_file is not None:
                password = (folder / self.sasl_password_file).read_text().strip()
            options.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                           sasl_plain_password=password)
        return options

    @model_validator(mode="after")
    def _keys_leave_room(self) -> KafkaSettings:
        if self.max_key_bytes > self.max_message_bytes // 2:
            raise ValueError(f"max_key_bytes ({self.max_key_bytes}) must be at most half of max_message_bytes "
                             f"({self.max_message_bytes}), to leave room for the value")
        return self


async def serve_kafka(ctx: TransportContext[KafkaSettings], *, task_status: TaskStatus[None]) -> None:
    try:
        from hostd_kafka.stream import Stream
    except ImportError as exc:
        raise RuntimeError("the kafka transport needs aiokafka: pip install 'hostd[kafka]'") from exc
    settings = ctx.settings
    security = settings.security(ctx.daemon.folder)  # files are read once: a missing one fails the start
    task_status.started()  # readiness does not wait for the broker; reconnect() retries
    await reconnect(lambda: Stream(ctx.dataplane, settings, security), ctx.stop, settings, service="kafka", log=log,
                    servers=settings.bootstrap_servers)


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    register(Transport(name="kafka", settings=KafkaSettings, serve=serve_kafka))
